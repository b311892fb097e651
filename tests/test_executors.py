"""Executors: the same input and config give byte-identical files whatever runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.executors import make_executor
from pipeline.graph import load_graph
from pipeline.runner import run_graph
from tests.conftest import data_files, write_graph


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    from tests.conftest import write_corpus

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
