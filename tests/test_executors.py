"""Executors: the same input and config give byte-identical files whatever runs them, and a task that
kills its worker process fails alone."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from gristmill.pipeline.engine.executors import WorkerDied, make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import RunFailed, run_graph
from tests.conftest import data_files, write_corpus, write_graph
from tests.plugin_stages import CRASH_VARIABLE


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("executors")
    write_corpus(root / "corpus", files=5)
    graph_path = write_graph(root / "g.yaml", root / "corpus")
    run_graph(load_graph(graph_path, root / "baseline"), make_executor("inprocess"))
    return graph_path, data_files(root / "baseline")


@pytest.mark.parametrize("kind,workers", [("inprocess", 1), ("local", 1), ("local", 2), ("dask", 1), ("dask", 2)])
def test_output_is_byte_identical_across_executors(baseline, tmp_path: Path, kind: str, workers: int) -> None:
    graph_path, expected = baseline
    with make_executor(kind, workers) as executor:
        assert executor.workers == workers
        run_graph(load_graph(graph_path, tmp_path / "run"), executor)
    produced = data_files(tmp_path / "run")
    assert sorted(produced) == sorted(expected)
    assert len(expected) == 2 * 2 * 5  # two stages, data + ledger, five shards
    assert produced == expected


def exit_on_three(number: int) -> int:
    """A task that ends its worker process on one item, as a crashing native library would."""
    if number == 3:
        os._exit(3)
    time.sleep(0.2)
    return number * number


def process_id(_: int) -> int:
    time.sleep(0.01)
    return os.getpid()


def test_the_local_pool_starts_no_process_per_task_and_survives_an_idle_worker_killed() -> None:
    with make_executor("local", workers=2) as executor:
        pids = {pid for _, pid in executor.map_unordered(process_id, range(40))}
        assert 1 <= len(pids) <= 2
        os.kill(pids.pop(), signal.SIGKILL)  # as the OOM killer would, between two maps
        time.sleep(0.5)
        results = dict(executor.map_unordered(process_id, range(6)))
        assert sorted(results) == list(range(6)) and all(isinstance(pid, int) for pid in results.values())


def test_a_task_that_ends_its_process_fails_alone_on_the_local_pool() -> None:
    with make_executor("local", workers=2) as executor:
        results = dict(executor.map_unordered(exit_on_three, range(8)))
        assert sorted(results) == list(range(8))
        assert {number: value for number, value in results.items() if number != 3} == {
            number: number * number for number in range(8) if number != 3}
        assert isinstance(results[3], WorkerDied) and "exit code 3" in str(results[3])
        assert dict(executor.map_unordered(exit_on_three, [4, 5])) == {4: 16, 5: 25}, "the pool was not rebuilt"


@pytest.mark.parametrize("how,cause", [("exit_3", "exit code 3"), ("sigkill", "SIGKILL")])
def test_a_shard_that_kills_its_worker_fails_alone_and_resumes_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, cause: str
) -> None:
    write_corpus(tmp_path / "corpus", files=5, docs_per_file=30)
    extra = (f"  crash:\n    stage: test_crash_worker\n    input: long\n"
             f"    params: {{id_prefix: doc-2-, how: {how}, seconds_per_batch: 0.3}}\n")
    graph_path = write_graph(tmp_path / "g.yaml", tmp_path / "corpus", extra, plugins=True)
    monkeypatch.delenv(CRASH_VARIABLE, raising=False)
    run_graph(load_graph(graph_path, tmp_path / "clean"), make_executor("inprocess"))
    clean = data_files(tmp_path / "clean")

    monkeypatch.setenv(CRASH_VARIABLE, "1")
    with make_executor("local", workers=2) as executor, pytest.raises(RunFailed) as failed:
        run_graph(load_graph(graph_path, tmp_path / "run"), executor, retries=1)
    message = str(failed.value)
    assert message.startswith("1 task(s) failed: crash/part-00002;") and cause in message
    assert "BrokenProcessPool" not in message
    failures = tmp_path / "run" / "crash" / "_failures"
    assert [path.name for path in failures.iterdir()] == ["part-00002.txt"]
    record = (failures / "part-00002.txt").read_text()
    assert "crash/part-00002" in record and "worker process died" in record and cause in record
    assert "BrokenProcessPool" not in record
    events = [json.loads(line) for line in (tmp_path / "run" / "_events.jsonl").read_text().splitlines()]
    crash_events = [event for event in events if event["node"] == "crash"]
    assert [(event["shard"], event["attempt"]) for event in crash_events if event["event"] == "shard_error"] == [
        ("part-00002", 0), ("part-00002", 1)]
    assert sorted(event["shard"] for event in crash_events if event["event"] == "shard_done") == [
        "part-00000", "part-00001", "part-00003", "part-00004"]
    produced = data_files(tmp_path / "run")
    assert {name: produced[name] for name in produced if "part-00002" not in name or "crash" not in name} == {
        name: clean[name] for name in clean if "part-00002" not in name or "crash" not in name}

    monkeypatch.delenv(CRASH_VARIABLE)
    with make_executor("local", workers=2) as executor:
        run_graph(load_graph(graph_path, tmp_path / "run"), executor)
    assert data_files(tmp_path / "run") == clean
    assert not failures.exists() or not list(failures.iterdir())
