"""`--cluster slurm` against a real single-node Slurm: two batch jobs of Dask workers write the bytes an in-process
run writes, and the cluster's jobs end with the run."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gristmill.pipeline.cli.main import cli
from gristmill.pipeline.cli.options import cluster_option
from gristmill.pipeline.engine.executors import ClusterRequest, make_executor
from tests.conftest import data_files, gristmill_env, run_cli, write_corpus, write_graph
from tests.slurm_cluster import SingleNodeSlurm, SlurmUnavailable

# langid goes through BLAS (its scores change with the OpenBLAS thread count), and the dedup stages reduce over
# every shard, so the graph has map and global steps.
DEDUP_STAGES = """\
  language:
    stage: langid
    input: long
    params: {min_score: 0.0}
  exact:
    stage: exact_dedup
    input: language
  near:
    stage: near_dedup
    input: exact
    params: {threshold: 0.7}
"""
ONE_CORE_JOBS = ["--cluster-option", "cores=1", "--cluster-option", "memory=1GB",
                 "--cluster-option", "walltime=00:10:00"]


@pytest.fixture(scope="module")
def slurm() -> Iterator[SingleNodeSlurm]:
    """Fails rather than skips when Slurm cannot start: CI installs it (.ci/run), so a skip would hide a broken
    setup."""
    cluster = SingleNodeSlurm()
    try:
        cluster.start()
    except SlurmUnavailable as error:
        cluster.stop()
        raise pytest.fail.Exception(f"a single-node Slurm did not start: {error}", pytrace=False) from None
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(cluster.config))
        patch.setenv("PYTHONPATH", gristmill_env()["PYTHONPATH"])  # jobs import this file's task functions
        try:
            yield cluster
        finally:
            cluster.stop()


def wait_for_empty_queue(slurm: SingleNodeSlurm, timeout: float = 30) -> list[str]:
    """The jobs still queued once the queue empties or `timeout` passes (a cancelled job completes briefly)."""
    deadline = time.monotonic() + timeout
    while (jobs := slurm.job_ids()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return jobs


def test_two_slurm_jobs_write_the_bytes_of_an_in_process_run(tmp_path: Path, slurm: SingleNodeSlurm) -> None:
    write_corpus(tmp_path / "corpus", files=4, docs_per_file=150)
    graph = write_graph(tmp_path / "graph.yaml", tmp_path / "corpus", extra_stages=DEDUP_STAGES)
    logs = tmp_path / "job-logs"
    run_cli("run", str(graph), "--output", str(tmp_path / "inprocess"), "--executor", "inprocess")
    run_cli("run", str(graph), "--output", str(tmp_path / "slurm"), "--cluster", "slurm", "--cluster-jobs", "2",
            *ONE_CORE_JOBS, "--cluster-option", f"log_directory={logs}", timeout=300)

    expected = data_files(tmp_path / "inprocess")
    assert {Path(name).parts[0] for name in expected} == {"read", "long", "language", "exact", "near"}
    assert data_files(tmp_path / "slurm") == expected
    joined = {match[1] for path in logs.glob("*.err")
              if (match := re.fullmatch(r"dask-worker-(\d+)\.err", path.name)) and "Registered to" in path.read_text()}
    assert len(joined) == 2, f"workers of Slurm jobs {sorted(joined)} joined; expected two jobs"
    assert wait_for_empty_queue(slurm) == []


def test_jobs_whose_workers_cannot_start_are_one_line_at_once(tmp_path: Path, slurm: SingleNodeSlurm) -> None:
    write_corpus(tmp_path / "corpus", files=1, docs_per_file=5)
    graph = write_graph(tmp_path / "graph.yaml", tmp_path / "corpus")
    started = time.monotonic()
    result = run_cli("run", str(graph), "--output", str(tmp_path / "run"), "--cluster", "slurm", "--cluster-jobs", "2",
                     *ONE_CORE_JOBS, "--cluster-option", "python=/bin/false",
                     "--cluster-option", f"log_directory={tmp_path / 'job-logs'}", check=False, timeout=120)
    assert result.returncode == 2
    assert re.fullmatch(r"error: --cluster slurm: slurm jobs \d+, \d+ ended before a Dask worker joined; .*\n",
                        result.stderr), result.stderr
    assert time.monotonic() - started < 60
    assert wait_for_empty_queue(slurm) == []


def test_each_job_runs_tasks_with_one_blas_thread(slurm: SingleNodeSlurm, tmp_path: Path) -> None:
    request = ClusterRequest("slurm", jobs=2, options={"cores": 1, "memory": "1GB", "walltime": "00:10:00",
                                                       "log_directory": str(tmp_path / "job-logs")})
    with make_executor("dask", cluster=request) as executor:
        assert executor.workers == 2
        results = [result for _, result in executor.map_unordered(job_and_blas_threads, range(8))]
    assert {threads for _, threads in results} == {("1", 1)}
    assert len({job for job, _ in results}) == 2
    assert wait_for_empty_queue(slurm) == []


def job_and_blas_threads(_: int) -> tuple[str, tuple[str, int]]:
    """The Slurm job a task ran in, and its OpenBLAS thread setting and count (the worker imports numpy)."""
    import numpy  # noqa: F401 - loads OpenBLAS, so threadpoolctl sees it
    from threadpoolctl import threadpool_info

    time.sleep(0.3)  # long enough that the scheduler hands tasks to both workers
    blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return os.environ["SLURM_JOB_ID"], (os.environ.get("OPENBLAS_NUM_THREADS", "unset"), max(blas))


@pytest.mark.parametrize("text,expected", [
    ("cores=8", ("cores", 8)),
    ("memory=32GB", ("memory", "32GB")),
    ("walltime=04:00:00", ("walltime", "04:00:00")),
    ("job_extra_directives=[--exclusive, --gres=gpu:1]", ("job_extra_directives", ["--exclusive", "--gres=gpu:1"])),
    ("nanny=false", ("nanny", False)),
])
def test_a_cluster_option_value_is_yaml_and_a_time_stays_text(text: str, expected: tuple) -> None:
    assert cluster_option(text) == expected


@pytest.mark.parametrize("arguments,message", [
    (["--cluster", "slurm", "--cluster-option", "cores=1", "--cluster-option", "walltim=1:00:00"],
     "error: --cluster-option walltim: not an option of SLURMCluster"),
    (["--cluster", "slurm", "--cluster-option", "cores"], "error: --cluster-option cores: expected KEY=VALUE"),
    (["--cluster-jobs", "2"], "error: --cluster-jobs needs --cluster slurm"),
    (["--cluster", "slurm", "--scheduler", "tcp://127.0.0.1:1"], "error: --cluster starts its own Dask scheduler"),
    (["--cluster", "slurm", "--cluster-option", "memory=1GB"],
     "error: --cluster slurm: SLURMCluster: You must specify how much cores and memory per job"),
])
def test_a_bad_cluster_request_is_one_line_naming_the_option(tmp_path: Path, arguments: list[str],
                                                              message: str) -> None:
    write_corpus(tmp_path / "corpus", files=1, docs_per_file=5)
    graph = write_graph(tmp_path / "graph.yaml", tmp_path / "corpus")
    result = CliRunner().invoke(cli, ["run", str(graph), "--output", str(tmp_path / "run"), *arguments])
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
