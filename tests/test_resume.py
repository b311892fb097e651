"""Faults: SIGKILL then resume gives identical bytes; failing shards are retried, then reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.executors import InProcessExecutor, make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import RunFailed, run_graph
from tests.conftest import REPO, data_files, gristmill_env, run_cli, write_corpus, write_graph


def slow_graph(tmp_path: Path, files: int) -> Path:
    write_corpus(tmp_path / "corpus", files=files, docs_per_file=50)
    extra = "  slow:\n    stage: test_slow_copy\n    input: long\n    params: {seconds_per_batch: 0.4}\n"
    return write_graph(tmp_path / "g.yaml", tmp_path / "corpus", extra, plugins=True)


def test_sigkill_halfway_then_resume_gives_identical_bytes(tmp_path: Path) -> None:
    graph_path = slow_graph(tmp_path, files=12)
    run_cli("run", str(graph_path), "--output", str(tmp_path / "clean"), "--executor", "inprocess")

    killed_run = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(graph_path), "--output", str(killed_run),
         "--executor", "local", "--workers", "2"],
        cwd=REPO, env=gristmill_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    records = killed_run / "slow" / "_shards"
    deadline = time.monotonic() + 120
    while len(list(records.glob("*.json"))) < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    completed_before = len(list(records.glob("*.json")))
    assert completed_before < 12 and not Dataset(killed_run / "slow").is_complete

    resumed = run_cli("run", str(graph_path), "--output", str(killed_run), "--executor", "local", "--workers", "2")
    assert "slow" in resumed.stderr
    assert data_files(killed_run) == data_files(tmp_path / "clean")
    assert not [path for path in killed_run.rglob("*") if ".tmp-" in path.name]
    skipped = [record for record in Dataset(killed_run / "slow").manifest().shards]
    assert len(skipped) == 12


def test_a_failing_shard_is_retried_then_named_and_the_rest_complete(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus", files=4, docs_per_file=30)
    extra = "  fail:\n    stage: test_fail_on\n    input: long\n    params: {id_prefix: doc-2-}\n"
    graph_path = write_graph(tmp_path / "g.yaml", tmp_path / "corpus", extra, plugins=True)
    result = run_cli("run", str(graph_path), "--output", str(tmp_path / "run"), "--executor", "local",
                     "--workers", "2", "--retries", "1", check=False)
    assert result.returncode == 1
    assert "1 task(s) failed: fail/part-00002" in result.stderr
    assert "ValueError: deliberate failure for the test" in result.stderr
    failed = Dataset(tmp_path / "run" / "fail")
    assert not failed.is_complete
    assert [record.name for record in failed.shard_records()] == ["part-00000", "part-00001", "part-00003"]
    traceback = (tmp_path / "run" / "fail" / "_failures" / "part-00002.txt").read_text()
    assert "Traceback" in traceback and "deliberate failure" in traceback
    summary = json.loads((tmp_path / "run" / "_summary.json").read_text())
    assert [stage["failed_shards"] for stage in summary["stages"]] == [[], [], ["part-00002"]]
    events = [json.loads(line) for line in (tmp_path / "run" / "_events.jsonl").read_text().splitlines()]
    errors = [event for event in events if event["event"] == "shard_error"]
    assert [(event["shard"], event["attempt"]) for event in errors] == [("part-00002", 0), ("part-00002", 1)]
    assert errors[0]["error"] == "ValueError: deliberate failure for the test"
    assert sum(event["event"] == "shard_done" for event in events) == 4 + 4 + 3


@pytest.mark.parametrize("retries,succeeds", [(0, False), (1, True)])
def test_transient_faults_are_retried(tmp_path: Path, retries: int, succeeds: bool) -> None:
    write_corpus(tmp_path / "corpus", files=2, docs_per_file=20)
    (tmp_path / "markers").mkdir()
    extra = f"  flaky:\n    stage: test_flaky\n    input: long\n    params: {{marker_dir: '{tmp_path / 'markers'}'}}\n"
    graph = load_graph(write_graph(tmp_path / "g.yaml", tmp_path / "corpus", extra, plugins=True), tmp_path / "run")
    if succeeds:
        run_graph(graph, InProcessExecutor(), retries=retries)
        assert Dataset(tmp_path / "run" / "flaky").manifest().rows == Dataset(tmp_path / "run" / "long").manifest().rows
    else:
        with pytest.raises(RunFailed, match="flaky/part-00000, flaky/part-00001"):
            run_graph(graph, InProcessExecutor(), retries=retries)


@pytest.mark.parametrize("kind", ["local", "dask"])
def test_a_worker_dying_mid_task_does_not_change_the_output(tmp_path: Path, kind: str) -> None:
    write_corpus(tmp_path / "corpus", files=4, docs_per_file=50)
    for name in ("markers", "baseline_markers"):
        (tmp_path / name).mkdir()
    (tmp_path / "baseline_markers" / "killed").touch()  # the baseline never kills

    def graph(markers: str):
        extra = (f"  copy:\n    stage: test_kill_worker_once\n    input: long\n"
                 f"    params: {{marker_dir: '{tmp_path / markers}', id_prefix: doc-1-}}\n")
        return load_graph(write_graph(tmp_path / f"{markers}.yaml", tmp_path / "corpus", extra, plugins=True),
                          tmp_path / markers.replace("markers", "run"))

    run_graph(graph("baseline_markers"), make_executor("inprocess"))
    with make_executor(kind, workers=2) as executor:
        run_graph(graph("markers"), executor)
    assert (tmp_path / "markers" / "killed").exists(), "no worker was killed"
    assert data_files(tmp_path / "run") == data_files(tmp_path / "baseline_run")


def test_a_failing_reduce_step_is_reported_like_a_failed_shard(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus", files=2, docs_per_file=20)
    extra = "  broken:\n    stage: test_broken_reduce\n    input: long\n"
    graph_path = write_graph(tmp_path / "g.yaml", tmp_path / "corpus", extra, plugins=True)
    result = run_cli("run", str(graph_path), "--output", str(tmp_path / "run"), "--executor", "inprocess", check=False)
    assert result.returncode == 1
    assert "1 task(s) failed: broken/reduce" in result.stderr
    assert "ValueError: no such column: quality" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Traceback" in (tmp_path / "run" / "broken" / "_failures" / "reduce.txt").read_text()
