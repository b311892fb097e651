"""Dask as users run it: a hand-started scheduler and two workers on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import data_files, gristmill_env, run_cli, write_corpus, write_graph

DASK = str(Path(sys.executable).parent / "dask")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def loopback_cluster(tmp_path: Path):
    """`dask scheduler` plus two `dask worker` processes of two threads each, as a user starts them by hand."""
    address = f"tcp://127.0.0.1:{free_port()}"
    log = open(tmp_path / "cluster.log", "w")
    common = dict(env=gristmill_env(), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    processes = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                   "--no-dashboard", "--no-show"], **common)]
    processes += [
        subprocess.Popen([DASK, "worker", address, "--nthreads", "2", "--no-dashboard", "--name", f"w{index}"], **common)
        for index in range(2)
    ]
    try:
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout="5s") as client:
                    client.wait_for_workers(2, timeout=60)
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "cluster.log").read_text()
                time.sleep(0.5)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def test_cli_runs_against_an_existing_scheduler(tmp_path: Path, loopback_cluster: str) -> None:
    write_corpus(tmp_path / "corpus", files=4)
    graph_path = write_graph(tmp_path / "g.yaml", tmp_path / "corpus")
    run_cli("run", str(graph_path), "--output", str(tmp_path / "local"), "--executor", "inprocess")
    result = run_cli("run", str(graph_path), "--output", str(tmp_path / "cluster"), "--scheduler", loopback_cluster)
    assert "long" in result.stderr
    assert data_files(tmp_path / "cluster") == data_files(tmp_path / "local")


def test_gpu_tasks_on_a_local_cluster_without_gpus_are_refused_in_one_line(tmp_path: Path) -> None:
    """A LocalCluster offers no GPU resource, so embedding on cuda there would wait for ever; the run says why."""
    write_corpus(tmp_path / "corpus", files=1, docs_per_file=10)
    graph = write_graph(tmp_path / "g.yaml", tmp_path / "corpus",
                        "  embedded:\n    stage: embed\n    input: long\n    params: {device: cuda}\n")
    result = run_cli("run", str(graph), "--output", str(tmp_path / "run"), "--executor", "dask", "--workers", "1",
                     check=False, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: tasks need GPU=1 per worker and no worker of this cluster offers it; start workers with "
        "`dask worker --resources GPU=1` and pass --scheduler, or run with the default executor")
