"""The dataset format: manifest round trip, atomic shards, and reading with polars and pyarrow."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from gristmill.pipeline.engine.dataset import Dataset, DatasetError, Manifest, ParquetShardWriter, file_checksum
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.pipeline.engine.executors import InProcessExecutor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from tests.conftest import write_graph


@pytest.fixture
def finished_run(tmp_path: Path, corpus: Path) -> Path:
    graph = load_graph(write_graph(tmp_path / "g.yaml", corpus), tmp_path / "run")
    run_graph(graph, InProcessExecutor())
    return tmp_path / "run"


def documents(count: int, start: int = 0) -> pa.Table:
    return pa.Table.from_pylist(
        [{"id": f"d{i}", "text": f"text number {i}", "url": None, "domain": None, "source": "s",
          "fetch_time": None, "lang": "en", "lang_score": 0.9} for i in range(start, start + count)],
        schema=DOCUMENT_SCHEMA,
    )


def test_manifest_and_schema_round_trip(finished_run: Path) -> None:
    dataset = Dataset(finished_run / "long")
    manifest = dataset.manifest()
    again = Manifest.model_validate_json(manifest.model_dump_json())
    assert again == manifest
    assert again.schema.equals(DOCUMENT_SCHEMA)
    assert manifest.stage == "length_filter"
    assert manifest.parents == [str(finished_run / "read")]
    assert [shard.name for shard in manifest.shards] == [f"part-{i:05d}" for i in range(4)]
    for shard in manifest.shards:
        path = dataset.shard_path(shard.name)
        assert shard.checksum == file_checksum(path)
        assert shard.bytes == path.stat().st_size
        assert pq.ParquetFile(path).metadata.num_rows == shard.rows
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert manifest.rows == sum(shard.rows for shard in manifest.shards)


def test_polars_and_pyarrow_read_the_directory_as_is(finished_run: Path) -> None:
    directory = finished_run / "long"
    manifest = Dataset(directory).manifest()
    with_pyarrow = pads.dataset(directory, format="parquet").to_table()
    with_polars = pl.read_parquet(directory / "*.parquet")  # polars recurses into folders, so glob
    assert with_pyarrow.num_rows == with_polars.height == manifest.rows > 0
    assert with_pyarrow.schema.equals(DOCUMENT_SCHEMA)
    assert set(with_polars["id"].to_list()) == set(with_pyarrow.column("id").to_pylist())
    ledger = pl.read_parquet(directory / "_rejects" / "*.parquet")
    assert ledger.height == sum(manifest.rejected.values())
    assert ledger.columns == ["id", "stage", "reason", "detail"]


def test_writer_is_invisible_until_commit_and_makes_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "part-00000.parquet"
    writer = ParquetShardWriter(path, DOCUMENT_SCHEMA, row_group_rows=100)
    for start in range(0, 350, 50):
        writer.write(documents(50, start))
    assert not path.exists()
    assert pads.dataset(tmp_path, format="parquet").count_rows() == 0  # the temporary is ignored
    size, checksum = writer.commit()
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_rows == 350
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [100, 100, 100, 50]
    assert size == path.stat().st_size and checksum == file_checksum(path)
    assert list(tmp_path.iterdir()) == [path]


def test_aborted_writer_leaves_nothing(tmp_path: Path) -> None:
    writer = ParquetShardWriter(tmp_path / "part-00000.parquet", DOCUMENT_SCHEMA)
    writer.write(documents(10))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_incomplete_dataset_is_reported_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=str(tmp_path / "nothing")):
        Dataset(tmp_path / "nothing").manifest()
