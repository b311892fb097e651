"""A worker host lost mid-run: a Dask cluster on separate test hosts (network namespaces) runs near-dedup, one
worker host has every process killed while it runs a task, and the run still ends with the same bytes.

Hosts share only the installed code and the run directory (a shared file system); each has its own TMPDIR and
Dask local directory.
When this file runs as a program, it is the kill switch, started on the scheduler host (see `kill_host_mid_task`).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, data_files, gristmill_env, run_cli
from tests.netns_hosts import Host, private_network, unavailable_reason
from tests.test_dedup import write_noisy_corpus

BIN = Path(sys.executable).parent
SCHEDULER_PORT = 8786  # each host has its own ports
WORKER_HOSTS = ("w1", "w2")
SHARDS = 8
# Character shingles make each shard's summary (its MinHashes) take a moment, so the kill lands inside one.
GRAPH = """plugins: [gristmill.stages.dedup.near_dedup]
stages:
  read: {{stage: read_text, params: {{paths: ['{corpus}/*.jsonl']}}}}
  near: {{stage: near_dedup, input: read, params: {{shingle: char, survivor: longest}}}}
"""


@pytest.fixture
def hosts(tmp_path: Path):
    """A scheduler host and two worker hosts. Without network namespaces (root and iproute2, as .ci/run installs)
    the test fails, never skips: a skip would hide a broken set-up."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.fail(f"the host-loss test needs network namespaces: {reason}")
    with private_network(["sched", *WORKER_HOSTS], tmp_path / "hosts") as network:
        yield network


def start_cluster(hosts: dict[str, Host]) -> str:
    """`dask scheduler` on the scheduler host and one single-threaded `dask worker` (with its nanny, as
    Gristmill's own Dask executor runs them) on each worker host, each with a local directory of its own."""
    scheduler = hosts["sched"]
    address = f"tcp://{scheduler.address}:{SCHEDULER_PORT}"
    scheduler.start([str(BIN / "dask"), "scheduler", "--host", scheduler.address, "--port", str(SCHEDULER_PORT),
                     "--no-dashboard"], gristmill_env(), "scheduler")
    for host in (hosts[name] for name in WORKER_HOSTS):
        host.start([str(BIN / "dask"), "worker", address, "--host", host.address, "--name", host.name,
                    "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                    "--local-directory", str(host.local_dir / "dask")], gristmill_env(), "worker")
    return address


def host_logs(hosts: dict[str, Host]) -> str:
    return "\n".join(f"--- {path}\n{path.read_text()[-3000:]}"
                     for host in hosts.values() for path in sorted(host.local_dir.glob("*.log")))


def relative_files(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file())


def test_a_worker_host_killed_mid_run_leaves_the_output_identical(tmp_path: Path, hosts: dict[str, Host]) -> None:
    shared = tmp_path / "shared"
    write_noisy_corpus(shared / "corpus", files=SHARDS, docs_per_file=1500)
    graph = shared / "near.yaml"
    graph.write_text(GRAPH.format(corpus=shared / "corpus"))
    run_cli("run", str(graph), "--output", str(shared / "uninterrupted"), "--executor", "inprocess")

    scheduler, doomed = hosts["sched"], hosts["w2"]
    address = start_cluster(hosts)
    output = shared / "cluster"
    kill_switch = scheduler.start(
        [sys.executable, "-m", "tests.test_host_loss", address, doomed.address, doomed.namespace,
         str(output / "near" / "_work" / "summaries" / "*.parquet"), str(SHARDS)],
        gristmill_env(), "kill-switch", stdout=subprocess.PIPE, text=True, cwd=REPO)
    ready = json.loads(kill_switch.stdout.readline() or "{}")  # the kill switch is watching: the run may start
    worker_hosts = [hosts[name] for name in WORKER_HOSTS]
    assert ready.get("temp_dirs") == {host.address: str(host.temp_dir) for host in worker_hosts}, host_logs(hosts)
    run = scheduler.start([str(BIN / "gristmill"), "run", str(graph), "--output", str(output), "--executor", "dask",
                           "--scheduler", address], gristmill_env(), "gristmill")
    try:
        assert run.wait(timeout=150) == 0, host_logs(hosts)
        kill_switch.wait(timeout=30)  # it stops once every summary is written
    finally:
        for process in (run, kill_switch):
            process.kill()  # still running only after a failure; the hosts' teardown stops the rest
    kill = json.loads(kill_switch.stdout.read() or "{}")
    assert kill.get("executing"), f"the kill did not land while the host ran a task: {kill}\n{host_logs(hosts)}"
    assert 0 < kill["finished"] < SHARDS
    assert doomed.pids() == []

    assert data_files(output) == data_files(shared / "uninterrupted")
    assert relative_files(output) == relative_files(shared / "uninterrupted")  # nothing left over, nothing else
    assert relative_files(hosts["w1"].temp_dir) == []  # tasks keep nothing on the host that ran them


def executing_tasks(dask_worker) -> list[str]:
    return [str(task.key) for task in dask_worker.state.executing]


def kill_host_mid_task(scheduler: str, host_address: str, namespace: str, finished_glob: str, tasks: int) -> None:
    """Once every worker has joined, print each worker host's temp dir; then, once some but not all of `tasks` have
    finished (`finished_glob` counts them) and the moment a worker of the host is executing a task, SIGKILL every
    process of the host and print what it was executing. Both lines are JSON."""
    from distributed import Client

    with Client(scheduler, timeout="60s") as client:
        client.wait_for_workers(len(WORKER_HOSTS), timeout=60)
        host_of = {worker: info["host"] for worker, info in client.scheduler_info()["workers"].items()}
        temp_dirs = {host_of[worker]: path for worker, path in client.run(tempfile.gettempdir).items()}
        print(json.dumps({"temp_dirs": temp_dirs}), flush=True)
        workers = [worker for worker, host in host_of.items() if host == host_address]
        while (finished := len(glob.glob(finished_glob))) < tasks:
            running = client.run(executing_tasks, workers=workers) if finished else {}
            executing = [key for keys in running.values() for key in keys]
            if executing:
                listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=True)
                for pid in listed.stdout.split():
                    os.kill(int(pid), signal.SIGKILL)
                print(json.dumps({"finished": finished, "executing": executing}), flush=True)
                return
            time.sleep(0.02)
        print(json.dumps({"finished": finished, "executing": []}), flush=True)


if __name__ == "__main__":
    kill_host_mid_task(*sys.argv[1:5], int(sys.argv[5]))
