"""The stage API and its accounting: rows in = rows out + rows rejected, with reasons, always."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.pipeline.engine.executors import InProcessExecutor, make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register, stage_class
from gristmill.stages.filters.length_filter import LengthFilter, LengthFilterConfig
from gristmill.stages.ingest.ingest import IngestConfig
from tests.conftest import write_graph


def batch_of(texts: list[str]) -> pa.RecordBatch:
    rows = [{"id": f"d{i}", "text": text} for i, text in enumerate(texts)]
    return pa.RecordBatch.from_pylist(rows, schema=DOCUMENT_SCHEMA)


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(alphabet=st.sampled_from("ab \n"), max_size=40), max_size=60),
    min_chars=st.integers(0, 30),
    extra_chars=st.one_of(st.none(), st.integers(0, 20)),
    min_words=st.integers(0, 6),
)
def test_length_filter_conserves_rows_and_gives_first_failing_reason(texts, min_chars, extra_chars, min_words) -> None:
    max_chars = None if extra_chars is None else max(min_chars, 1) + extra_chars
    stage = LengthFilter(LengthFilterConfig(min_chars=min_chars, max_chars=max_chars, min_words=min_words))
    result = stage.process(batch_of(texts))
    assert result.kept.num_rows + result.rejected.num_rows == len(texts)
    kept_ids = set(result.kept.column("id").to_pylist())
    rejected = dict(zip(result.rejected.column("id").to_pylist(), result.rejected.column("reason").to_pylist()))
    assert kept_ids.isdisjoint(rejected) and len(kept_ids) + len(rejected) == len(texts)
    for index, text in enumerate(texts):
        words = len(text.split())
        expected = ("too_short_chars" if len(text) < min_chars
                    else "too_long_chars" if max_chars is not None and len(text) > max_chars
                    else "too_short_words" if words < min_words else None)
        assert rejected.get(f"d{index}") == expected


def test_rejections_carry_their_detail() -> None:
    stage = LengthFilter(LengthFilterConfig(min_chars=5, max_words=2))
    result = stage.process(batch_of(["tiny", "just right", "one two three"]))
    assert result.kept.column("text").to_pylist() == ["just right"]
    assert result.rejected.column("detail").to_pylist() == ["chars=4 < 5", "words=3 > 2"]


def test_config_rejects_inverted_bounds() -> None:
    with pytest.raises(ValueError, match="max_chars must be at least min_chars"):
        LengthFilterConfig(min_chars=10, max_chars=5)


@pytest.mark.parametrize("options", [{"format": "wet"}, {"base_url": "https://mirror.example/"}, {"segments": 1}])
def test_ingest_refuses_crawl_listing_options_beside_explicit_paths(options: dict) -> None:
    with pytest.raises(ValueError, match=f"{next(iter(options))} needs crawl, and paths are given; it would be ignored"):
        IngestConfig(paths=["a.warc.gz"], **options)
    assert IngestConfig(crawl="CC-MAIN-2024-10", **options).crawl == "CC-MAIN-2024-10"


def test_an_ingest_config_survives_the_round_trip_every_task_makes() -> None:
    """Tasks carry the config as its full dump, every field set; that must not read as options beside paths."""
    config = IngestConfig(paths=["a.warc.gz"])
    assert IngestConfig.model_validate(config.model_dump(mode="json")) == config


def test_registering_a_second_stage_under_a_taken_name_fails() -> None:
    class Impostor(LengthFilter):
        name = "length_filter"

    with pytest.raises(ValueError, match="registered twice"):
        register(Impostor)
    assert stage_class("length_filter") is LengthFilter


def test_every_run_keeps_the_ledger_invariant_per_shard(tmp_path: Path, corpus: Path) -> None:
    graph = load_graph(write_graph(tmp_path / "g.yaml", corpus), tmp_path / "run")
    run_graph(graph, InProcessExecutor())
    for node in ("read", "long"):
        dataset = Dataset(tmp_path / "run" / node)
        for shard in dataset.manifest().shards:
            ledger = pl.read_parquet(dataset.reject_path(shard.name))
            assert shard.rows_in == shard.rows + shard.rows_rejected
            assert ledger.height == shard.rows_rejected
            assert set(ledger["stage"]) <= {node}
            assert dict(ledger["reason"].value_counts().iter_rows()) == shard.rejected
    read = Dataset(tmp_path / "run" / "read").manifest()
    assert read.rejected == {"malformed_json": 4, "missing_text": 4}
    assert read.rows_in == 4 * 302
    long = Dataset(tmp_path / "run" / "long").manifest()
    assert long.rows_in == read.rows
    assert set(long.rejected) == {"too_short_words", "too_long_chars"}


def test_read_text_handles_compressed_jsonl_and_parquet_alike(tmp_path: Path) -> None:
    rows = [{"id": f"x{i}", "text": f"document {i}", "url": "https://www.example.org/a"} for i in range(5)]
    with gzip.open(tmp_path / "docs.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    pl.DataFrame(rows).write_parquet(tmp_path / "docs.parquet")
    outputs = {}
    for name in ("docs.jsonl.gz", "docs.parquet"):
        graph_path = tmp_path / f"{name}.yaml"
        graph_path.write_text(f"stages:\n  read:\n    stage: read_text\n    params: {{paths: ['{tmp_path / name}']}}\n")
        run_graph(load_graph(graph_path, tmp_path / name.replace(".", "_")), InProcessExecutor())
        outputs[name] = pl.read_parquet(tmp_path / name.replace(".", "_") / "read" / "*.parquet")
    assert outputs["docs.jsonl.gz"].equals(outputs["docs.parquet"])
    assert outputs["docs.parquet"]["domain"].to_list() == ["example.org"] * 5
    assert outputs["docs.parquet"]["source"].to_list() == ["docs"] * 5


@pytest.mark.parametrize("kind", ["inprocess", "dask"])
def test_a_stage_with_a_global_view_sees_every_shard(tmp_path: Path, corpus: Path, kind: str) -> None:
    extra = "  longest:\n    stage: test_keep_longest\n    input: long\n    params: {keep_fraction: 0.25}\n"
    graph = load_graph(write_graph(tmp_path / "g.yaml", corpus, extra, plugins=True), tmp_path / "run")
    with make_executor(kind, 2) as executor:
        run_graph(graph, executor)
    before = pl.read_parquet(tmp_path / "run" / "long" / "*.parquet")
    after = pl.read_parquet(tmp_path / "run" / "longest" / "*.parquet")
    cutoff = before["text"].str.len_chars().sort(descending=True)[int(before.height * 0.25) - 1]
    assert after.height == (before["text"].str.len_chars() >= cutoff).sum()
    assert after["text"].str.len_chars().min() >= cutoff
    assert Dataset(tmp_path / "run" / "longest").manifest().rejected == {"below_global_cutoff": before.height - after.height}
    assert len(list((tmp_path / "run" / "longest" / "_work" / "summaries").glob("*.parquet"))) == 4


@register
class NoteShards(MapStage):
    """Keeps every document and notes each shard's document count in the work folder: no global view needed."""

    name = "test_note_shards"
    Config = StageConfig

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        notes = self.work_dir / "notes"
        notes.mkdir(parents=True, exist_ok=True)
        with open(notes / f"{self.shard_name}.txt", "a") as handle:
            handle.write(f"{batch.num_rows}\n")
        return BatchResult.keep_all(batch)


def test_any_stage_gets_a_work_folder_per_shard_without_a_global_view(tmp_path: Path, corpus: Path) -> None:
    extra = "  noted:\n    stage: test_note_shards\n    input: long\n"
    graph = load_graph(write_graph(tmp_path / "g.yaml", corpus, extra), tmp_path / "run")
    run_graph(graph, InProcessExecutor())
    long = Dataset(tmp_path / "run" / "long").manifest()
    work = tmp_path / "run" / "noted" / "_work"
    notes = {path.stem: sum(map(int, path.read_text().split())) for path in (work / "notes").glob("*.txt")}
    assert notes == {shard.name: shard.rows for shard in long.shards} and len(notes) == 4
    assert sorted(path.name for path in work.iterdir()) == ["notes"]  # no summaries: nothing was summarised


def test_keep_all_and_split_agree_on_schema() -> None:
    batch = batch_of(["a", "b"])
    kept = BatchResult.keep_all(batch)
    split = BatchResult.split(batch, pa.nulls(2, pa.string()))
    assert kept.kept.equals(split.kept)
    assert kept.rejected.schema.equals(split.rejected.schema)


def test_a_stage_that_splits_documents_counts_documents_not_rows(tmp_path: Path, corpus: Path) -> None:
    extra = "  sentences:\n    stage: test_split_sentences\n    input: long\n"
    graph = load_graph(write_graph(tmp_path / "g.yaml", corpus, extra, plugins=True), tmp_path / "run")
    run_graph(graph, InProcessExecutor())
    long = Dataset(tmp_path / "run" / "long").manifest()
    sentences = Dataset(tmp_path / "run" / "sentences").manifest()
    assert sentences.rows > long.rows
    assert sum(shard.documents_out for shard in sentences.shards) == long.rows
    assert sentences.rows_in == long.rows and sentences.rejected == {}
    assert sentences.stats == {"words": sentences.rows}
