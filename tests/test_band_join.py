"""near_dedup's band join split by hash range: the number of parts, unchanged output bytes, and resumption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from gristmill.stages.dedup import lsh
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.stages.dedup.lsh import band_join_parts, plan_dedup
from tests.conftest import REPO, data_files, gristmill_env
from tests.test_dedup import PLUGINS, write_noisy_corpus

SMALL_PART = 40  # rows per join task in these tests, so a few hundred documents split into several parts


def test_band_join_parts_follow_the_document_count_alone() -> None:
    rows = lsh.JOIN_ROWS_PER_TASK
    assert [band_join_parts(n) for n in (0, 1, rows, rows + 1, 3 * rows)] == [1, 1, 1, 2, 3]
    assert band_join_parts(100_000_000) == 6 and band_join_parts(500_000_000) == 30


def test_the_plan_sizes_the_band_join_by_its_parts() -> None:
    plan = plan_dedup(500_000_000, 90_000, 0.8)
    assert plan.join_parts == 30
    per_task = lsh.BAND_JOIN_BASE_BYTES + -(-500_000_000 // 30) * lsh.BAND_JOIN_ROW_BYTES
    assert plan.band_join_bytes == per_task < 2 * 2**30  # within the stage's declared 2 GB
    # Verification holds a 32nd of the documents (components.MAX_PARTITIONS), not a 64th.
    assert plan.peak_worker_bytes == max(per_task, 500_000_000 // 32 * lsh.MEAN_SHINGLES * 4 * 2)


def near_graph(tmp_path: Path, corpus: Path, verify: bool) -> Path:
    path = tmp_path / f"near-{verify}.yaml"
    path.write_text(
        PLUGINS + "stages:\n"
        + f"  read:\n    stage: read_text\n    params: {{paths: ['{corpus}/*.jsonl']}}\n"
        + f"  near:\n    stage: near_dedup\n    input: read\n    params: {{survivor: longest, verify: {str(verify).lower()}}}\n")
    return path


def dataset_files(dataset: Path) -> dict[str, object]:
    """A dataset's data shards and reject ledgers as bytes, and its shard records less their timing and paths."""
    files: dict[str, object] = {str(path.relative_to(dataset)): path.read_bytes()
                                for path in sorted(dataset.glob("*.parquet")) + sorted(dataset.glob("_rejects/*.parquet"))}
    for path in sorted(dataset.glob("_shards/*.json")):
        record = json.loads(path.read_text())
        files[str(path.relative_to(dataset))] = {key: value for key, value in record.items() if key not in ("seconds", "source")}
    return files


def band_edges(work: Path) -> pl.DataFrame:
    return pl.read_parquet(work / "edges" / "*" / "*.parquet").unique().sort("a", "b")


@pytest.mark.parametrize("verify", [True, False])
def test_splitting_bands_by_hash_leaves_the_dataset_bytes_unchanged(tmp_path: Path, monkeypatch, verify: bool) -> None:
    write_noisy_corpus(tmp_path / "corpus", files=4, docs_per_file=100)
    graph = near_graph(tmp_path, tmp_path / "corpus", verify)
    with make_executor("inprocess") as pool:
        run_graph(load_graph(graph, tmp_path / "whole"), pool)
    monkeypatch.setattr(lsh, "JOIN_ROWS_PER_TASK", SMALL_PART)
    with make_executor("inprocess") as pool:
        run_graph(load_graph(graph, tmp_path / "split"), pool)

    whole, split = (tmp_path / name / "near" / "_work" / "near_dedup" for name in ("whole", "split"))
    assert sorted(path.name for path in (whole / "bands" / "band-000").iterdir()) == ["part-00000"]
    parts = -(-400 // SMALL_PART)
    assert sorted(path.name for path in (split / "bands" / "band-000").iterdir()) == [f"part-{h:05d}" for h in range(parts)]
    names = sorted(path.stem for path in (split / "edges" / "part-00000").iterdir())
    assert names == [f"band-{b:03d}-part-{h:05d}" for b in range(16) for h in range(parts)]
    assert band_edges(split).equals(band_edges(whole)) and band_edges(whole).height > 50
    assert dataset_files(tmp_path / "split" / "near") == dataset_files(tmp_path / "whole" / "near")


def split_cli(*args: str) -> list[str]:
    """The gristmill command in a fresh interpreter whose band join uses SMALL_PART rows per task."""
    code = (f"import gristmill.stages.dedup.lsh as lsh; lsh.JOIN_ROWS_PER_TASK = {SMALL_PART}; "
            "from gristmill.pipeline.cli.main import main; main()")
    return [sys.executable, "-c", code, *args]


@pytest.mark.slow
def test_sigkill_during_a_split_band_join_then_resume_gives_identical_bytes(tmp_path: Path, monkeypatch) -> None:
    write_noisy_corpus(tmp_path / "corpus", files=4, docs_per_file=150, seed=3)
    graph = near_graph(tmp_path, tmp_path / "corpus", verify=True)
    monkeypatch.setattr(lsh, "JOIN_ROWS_PER_TASK", SMALL_PART)
    with make_executor("inprocess") as pool:
        run_graph(load_graph(graph, tmp_path / "clean"), pool)

    killed = tmp_path / "killed"
    command = split_cli("run", str(graph), "--output", str(killed), "--executor", "local", "--workers", "2")
    process = subprocess.Popen(command, cwd=REPO, env=gristmill_env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    edges = killed / "near" / "_work" / "near_dedup" / "edges"
    deadline = time.monotonic() + 120
    while not (edges.exists() and any(edges.rglob("*.parquet"))):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    parts = -(-600 // SMALL_PART)
    assert 0 < len(list(edges.rglob("*.parquet"))) < 16 * parts * 4  # killed inside the band join (4 partitions)

    subprocess.run(split_cli("run", str(graph), "--output", str(killed), "--executor", "local", "--workers", "2"),
                   cwd=REPO, env=gristmill_env(), check=True, capture_output=True)
    assert data_files(killed) == data_files(tmp_path / "clean")  # the work files too, band and edge parts included
    assert not [path for path in killed.rglob("*") if ".tmp-" in path.name]
