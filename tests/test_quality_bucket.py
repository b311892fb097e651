"""quality_bucket: exact global quantile levels, the same whatever the shards and executor; nulls and ties defined."""

from __future__ import annotations

from pathlib import Path

from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gristmill.pipeline.engine.dataset import REJECT_SCHEMA, Dataset, ParquetShardWriter, ShardRecord, write_json_atomic
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.engine.stage import ReduceContext
from gristmill.pipeline.reports.run_report import collect
from gristmill.stages.quality import score_ranks
from gristmill.stages.quality.quality_bucket import QualityBucket, QualityBucketConfig

SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("quality", pa.float32()), ("num_tokens", pa.int32())])


def write_dataset(path: Path, table: pa.Table, shards: int) -> Path:
    """A committed Gristmill dataset of `table`'s rows dealt round-robin into `shards` shards."""
    dataset = Dataset(path)
    dataset.prepare()
    records = []
    for shard in range(shards):
        name = f"part-{shard:05d}"
        rows = table.take(np.arange(shard, table.num_rows, shards))
        writer = ParquetShardWriter(dataset.shard_path(name), table.schema)
        writer.write(rows)
        size, checksum = writer.commit()
        ledger_bytes, ledger_checksum = ParquetShardWriter(dataset.reject_path(name), REJECT_SCHEMA).commit()
        record = ShardRecord(name=name, source="generated", rows=rows.num_rows, documents_out=rows.num_rows,
                             bytes=size, checksum=checksum, rows_in=rows.num_rows, ledger_bytes=ledger_bytes,
                             ledger_checksum=ledger_checksum)
        write_json_atomic(dataset.record_path(name), record.model_dump_json(indent=2))
        records.append(record)
    dataset.finalize("generated", {}, "generated", [], records, table.schema)
    return path


def scored_documents(count: int = 600, seed: int = 0) -> pa.Table:
    """Scores with ties (a tenth share one value), nulls and NaNs, and a token count per document."""
    rng = np.random.default_rng(seed)
    scores = rng.random(count).astype(np.float32)
    scores[rng.random(count) < 0.1] = 0.5
    scores[::37] = np.nan
    nulls = np.zeros(count, bool)
    nulls[5::41] = True
    return pa.table({
        "id": [f"doc-{index:04d}" for index in range(count)],
        "text": [f"document {index}" for index in range(count)],
        "quality": pa.array(scores, pa.float32(), mask=nulls),
        "num_tokens": pa.array(rng.integers(1, 100, count), pa.int32()),
    }, schema=SCHEMA)


def expected_levels(scores: list[float | None], levels: int) -> list[int | None]:
    """floor(levels × r / N), r the scored documents strictly below, N all scored documents (float32 compared)."""
    scored = np.array([score for score in scores if score is not None and not np.isnan(score)], np.float32)
    result = []
    for score in scores:
        if score is None or np.isnan(score):
            result.append(None)
        else:
            result.append(int(levels * int(np.sum(scored < np.float32(score))) // len(scored)))
    return result


class InlineContext(ReduceContext):
    def __init__(self, files: list[Path]):
        super().__init__([path.stem for path in files], files, files[0].parent,
                         lambda fn, items: [fn(item) for item in items])


@settings(max_examples=60, deadline=None)
@given(
    shards=st.lists(st.lists(st.one_of(st.none(), st.just(float("nan")), st.floats(-2, 2, width=32),
                                       st.sampled_from([0.0, -0.0, 0.25, 0.5, 0.75])), max_size=30),
                    min_size=1, max_size=4),
    levels=st.integers(2, 25),
    files_per_task=st.integers(1, 3),
)
def test_levels_are_the_exact_global_rank_share_of_every_score(tmp_path_factory, shards, levels, files_per_task) -> None:
    """Whatever the scores, and however the summary files are grouped into reduce tasks."""
    stage = QualityBucket(QualityBucketConfig(column="quality", levels=levels))
    directory = tmp_path_factory.mktemp("summaries")
    files = []
    for index, scores in enumerate(shards):
        batch = pa.RecordBatch.from_pydict({"quality": pa.array(scores, pa.float32())})
        files.append(directory / f"part-{index:05d}.parquet")
        pq.write_table(stage.summarize(batch), files[-1])
    with mock.patch.object(score_ranks, "FILES_PER_TASK", files_per_task):
        stage.bind(stage.reduce(InlineContext(files)), "part-00000")
    everything = [score for scores in shards for score in scores]
    written = []
    for scores in shards:
        result = stage.process(pa.RecordBatch.from_pydict({"quality": pa.array(scores, pa.float32())}))
        written += result.kept.column("quality_bucket").to_pylist()
        assert result.stats["unscored"] == sum(score is None or np.isnan(score) for score in scores)
    assert written == expected_levels(everything, levels)


@pytest.mark.parametrize("params,message", [
    ({"column": "quality", "levels": 1}, "greater than or equal to 2"),
    ({"column": "quality", "levels": 1001}, "less than or equal to 1000"),
    ({"levels": 20}, "column\n  Field required"),
])
def test_config_errors_name_the_field(params: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        QualityBucketConfig.model_validate(params)


def test_the_output_column_must_be_new_and_the_score_column_present() -> None:
    stage = QualityBucket(QualityBucketConfig(column="quality"))
    with pytest.raises(ValueError, match="no column 'quality'"):
        stage.output_schema(pa.schema([("id", pa.string())]))
    with pytest.raises(ValueError, match="'quality_bucket' already exists"):
        stage.output_schema(SCHEMA.append(pa.field("quality_bucket", pa.int16())))
    assert stage.output_schema(SCHEMA).field("quality_bucket").type == pa.int16()


def run_buckets(root: Path, shards: int, executor: str, table: pa.Table) -> Path:
    data = write_dataset(root / f"scored-{shards}", table, shards)
    graph = root / f"g-{shards}-{executor}.yaml"
    graph.write_text(f"stages:\n  levels:\n    stage: quality_bucket\n    input: '{data}'\n"
                     "    params: {column: quality, levels: 20}\n")
    output = root / f"run-{shards}-{executor}"
    with make_executor(executor, 2) as pool:
        run_graph(load_graph(graph, output), pool)
    return output


def test_levels_per_id_are_identical_whatever_the_shards_and_executor(tmp_path: Path) -> None:
    table = scored_documents()
    levels = {}
    for shards, executor in ((1, "inprocess"), (4, "inprocess"), (4, "local")):
        run = run_buckets(tmp_path, shards, executor, table)
        written = pq.read_table(sorted((run / "levels").glob("part-*.parquet"))).sort_by("id")
        levels[shards, executor] = dict(zip(written.column("id").to_pylist(),
                                            written.column("quality_bucket").to_pylist()))
        manifest = Dataset(run / "levels").manifest()
        unscored = sum(value is None for value in levels[shards, executor].values())
        assert manifest.stats["unscored"] == unscored == 15 + 17 - 1  # NaN every 37th, null every 41st, one both
    assert levels[1, "inprocess"] == levels[4, "inprocess"] == levels[4, "local"]
    assert list(levels[1, "inprocess"].values()) == expected_levels(table.column("quality").to_pylist(), 20)
    counts = np.bincount([level for level in levels[1, "inprocess"].values() if level is not None], minlength=20)
    assert counts.sum() == table.num_rows - 31 and counts.max() - counts.min() > 0  # the tie at 0.5 shares a level


def test_the_run_report_shows_documents_and_tokens_per_level(tmp_path: Path) -> None:
    table = scored_documents()
    run = run_buckets(tmp_path, 3, "inprocess", table)
    data = collect(run)
    [statistics] = [section["statistics"] for section in data["stage_sections"] if section["node"] == "levels"]
    levels = np.array(expected_levels(table.column("quality").to_pylist(), 20), dtype=object)
    tokens = np.array(table.column("num_tokens").to_pylist())
    scored = np.array([level is not None for level in levels])
    assert statistics["documents"] == [int(np.sum(levels[scored] == level)) for level in range(20)]
    assert statistics["tokens"] == [int(tokens[scored][levels[scored] == level].sum()) for level in range(20)]
    assert statistics["unscored_documents"] == 31 and statistics["unscored_tokens"] == int(tokens[~scored].sum())
    assert len(statistics["edges"]) == 19 and statistics["edges"] == sorted(statistics["edges"])


def test_a_dataset_without_scores_gets_null_levels(tmp_path: Path) -> None:
    table = scored_documents(50).set_column(2, "quality", pa.nulls(50, pa.float32()))
    run = run_buckets(tmp_path, 2, "inprocess", table)
    written = pq.read_table(sorted((run / "levels").glob("part-*.parquet")))
    assert written.column("quality_bucket").null_count == 50
    assert Dataset(run / "levels").manifest().stats["unscored"] == 50
