"""The exclude stage: listed ids and listed exact texts are dropped into the ledger, everything else is kept."""

from __future__ import annotations

import gzip
import itertools
import json
import unicodedata
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from rich.console import Console

from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import GraphError, load_graph
from gristmill.pipeline.engine.runner import plan_graph, run_graph
from gristmill.pipeline.engine.stage import stage_class
from gristmill.stages.filters.exclude import Exclude, ExcludeConfig, text_hash, text_hashes

QUIET = Console(quiet=True)

DOCUMENTS = [
    {"id": "cc-2024-10/held-out-river", "url": "https://news.example/river",
     "text": "The river rose two metres overnight, and the old mill on the east bank flooded before dawn."},
    {"id": "cc-2024-10/held-out-bread", "url": "https://bakery.example/rye",
     "text": "Rye bread needs a sour starter: mix flour and water, wait three days, and feed it every morning."},
    {"id": "cc-2024-18/mirror-of-river", "url": "https://mirror.example/river",
     "text": "The river rose two metres overnight, and the old mill on the east bank flooded before dawn."},
    {"id": "cc-2024-18/bread-one-char-off", "url": "https://copy.example/rye",
     "text": "Rye bread needs a sour starter: mix flour and water, wait three days, and feed it every morning!"},
    {"id": "cc-2024-18/harvest", "url": "https://farm.example/harvest",
     "text": "Farmers brought the wheat in early this year because the forecast promised a week of rain."},
    {"id": "cc-2024-22/festival", "url": "https://town.example/festival",
     "text": "The harvest festival returns on Saturday with a market, a brass band and a baking contest."},
    {"id": "cc-2024-22/cafe", "url": "https://town.example/cafe",
     "text": "Café Müller reopened on the square; its owner says the espresso machine is older than she is."},
]
HELD_OUT = DOCUMENTS[:2]


def write_list(path: Path, rows: list[dict]) -> Path:
    """A list file in the format its name says: .parquet, .jsonl or .jsonl.gz."""
    if path.name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        lines = "".join(json.dumps(row) + "\n" for row in rows).encode()
        path.write_bytes(gzip.compress(lines) if path.name.endswith(".gz") else lines)
    return path


def held_out_list(path: Path, documents: list[dict] = HELD_OUT) -> Path:
    """What `gristmill ablate` writes for a held-out slice: each document's id and text hash."""
    return write_list(path, [{"id": doc["id"], "text_hash": text_hash(doc["text"])} for doc in documents])


def run_exclude(tmp_path: Path, list_path: Path, documents: list[dict] = DOCUMENTS, run: str = "run") -> Dataset:
    """Read the documents from JSONL and run exclude on them through the engine, in process."""
    corpus = tmp_path / "documents.jsonl"
    corpus.write_text("".join(json.dumps(doc) + "\n" for doc in documents))
    graph = tmp_path / "graph.yaml"
    graph.write_text("name: exclusion\nstages:\n"
                     f"  read: {{stage: read_text, params: {{paths: ['{corpus}']}}}}\n"
                     f"  held_out: {{stage: exclude, input: read, params: {{list: '{list_path}'}}}}\n")
    with make_executor("inprocess") as executor:
        run_graph(load_graph(graph, tmp_path / run), executor, console=QUIET)
    return Dataset(tmp_path / run / "held_out")


def stage_for(list_path: Path, **options: str) -> Exclude:
    stage = Exclude(ExcludeConfig(list=str(list_path), **options))
    stage.setup()
    return stage


def batch_of(documents: list[dict]) -> pa.RecordBatch:
    rows = [{"id": doc["id"], "text": doc["text"]} for doc in documents]
    return pa.RecordBatch.from_pylist(rows, schema=DOCUMENT_SCHEMA)


def reasons_by_id(stage: Exclude, documents: list[dict]) -> dict[str, str | None]:
    """id -> reject reason, None where kept; checks that every row is kept or rejected, once."""
    result = stage.process(batch_of(documents))
    kept = result.kept.column("id").to_pylist()
    rejected = {row["id"]: row["reason"] for row in result.rejected.to_pylist()}
    assert len(kept) + len(rejected) == len(documents) and not set(kept) & set(rejected)
    return {doc["id"]: rejected.get(doc["id"]) for doc in documents}


def test_text_hash_is_xxh3_128_of_the_exact_utf8_text_without_normalisation() -> None:
    text = "Café Müller"
    assert text_hash(text) == xxhash.xxh3_128_hexdigest(text.encode("utf-8"))
    assert len(text_hash(text)) == 32 and text_hash(text) == text_hash(text).lower()
    assert text_hash(unicodedata.normalize("NFD", text)) != text_hash(unicodedata.normalize("NFC", text))
    assert text_hash(text + " ") != text_hash(text) and text_hash("") == xxhash.xxh3_128_hexdigest(b"")
    texts = [text, None, "", "日本語の文。"]
    expected = [text_hash(text), None, text_hash(""), text_hash("日本語の文。")]
    assert text_hashes(texts) == text_hashes(pa.array(texts)) == expected
    assert text_hashes(pa.chunked_array([pa.array(texts[:2], pa.large_string()), pa.array(texts[2:], pa.large_string())])) == expected


@pytest.mark.parametrize("list_name", ["held_out.jsonl", "held_out.parquet", "held_out.jsonl.gz"])
def test_listed_ids_and_their_texts_under_other_ids_go_to_the_ledger(tmp_path: Path, list_name: str) -> None:
    dataset = run_exclude(tmp_path, held_out_list(tmp_path / list_name))
    manifest = dataset.manifest()
    assert manifest.stage == "exclude"
    assert manifest.rows_in == len(DOCUMENTS) == manifest.rows + sum(manifest.rejected.values())
    assert manifest.rejected == {"listed_id": 2, "listed_text": 1}
    ledger = pl.read_parquet(dataset.reject_path(manifest.shards[0].name))
    assert sorted(ledger.select("id", "reason", "detail").rows()) == [
        ("cc-2024-10/held-out-bread", "listed_id", None),
        ("cc-2024-10/held-out-river", "listed_id", None),
        ("cc-2024-18/mirror-of-river", "listed_text", f"text_hash={text_hash(DOCUMENTS[0]['text'])}"),
    ]
    assert set(ledger["stage"]) == {"held_out"}
    kept = pl.read_parquet(dataset.shard_path(manifest.shards[0].name))
    assert kept["id"].to_list() == [doc["id"] for doc in DOCUMENTS[3:]]  # order kept; one character off is kept


def test_a_takedown_list_of_text_hashes_only_drops_every_copy_of_the_text(tmp_path: Path) -> None:
    takedown = write_list(tmp_path / "takedown.parquet", [{"text_hash": text_hash(DOCUMENTS[0]["text"])}])
    manifest = run_exclude(tmp_path, takedown).manifest()
    assert manifest.rejected == {"listed_text": 2} and manifest.rows == len(DOCUMENTS) - 2


def test_a_list_of_ids_only_never_looks_at_the_text(tmp_path: Path) -> None:
    stage = stage_for(write_list(tmp_path / "ids.jsonl", [{"id": "cc-2024-22/cafe"}, {"id": "not-in-the-corpus"}]),
                      text_column="no_such_column")
    assert stage.output_schema(DOCUMENT_SCHEMA) == DOCUMENT_SCHEMA
    reasons = reasons_by_id(stage, DOCUMENTS)
    assert reasons.pop("cc-2024-22/cafe") == "listed_id" and set(reasons.values()) == {None}


def test_an_id_listed_without_a_hash_and_a_hash_listed_without_an_id_mix_in_one_file(tmp_path: Path) -> None:
    list_path = write_list(tmp_path / "mixed.jsonl", [
        {"id": "cc-2024-18/harvest"},
        {"text_hash": text_hash(DOCUMENTS[5]["text"]).upper(), "note": "upper-case hex is the same digest"},
        {"id": None, "text_hash": None},
    ])
    reasons = reasons_by_id(stage_for(list_path), DOCUMENTS)
    assert {doc_id: reason for doc_id, reason in reasons.items() if reason} == {
        "cc-2024-18/harvest": "listed_id", "cc-2024-22/festival": "listed_text"}


def test_text_column_names_the_column_to_hash_and_null_texts_never_match(tmp_path: Path) -> None:
    stage = stage_for(write_list(tmp_path / "l.jsonl", [{"text_hash": text_hash("body text")}]), text_column="body")
    with pytest.raises(ValueError, match="no column 'body'"):
        stage.output_schema(DOCUMENT_SCHEMA)
    batch = pa.RecordBatch.from_pylist([{"id": "a", "body": "body text", "text": "x"}, {"id": "b", "body": None,
                                                                                          "text": "body text"}])
    result = stage.process(batch)
    assert result.kept.column("id").to_pylist() == ["b"] and result.rejected.column("reason").to_pylist() == ["listed_text"]


@pytest.mark.parametrize("list_name", ["bad.jsonl", "bad.parquet"])
def test_a_list_with_neither_column_is_one_line_naming_the_file(tmp_path: Path, list_name: str) -> None:
    list_path = write_list(tmp_path / list_name, [{"doc_id": "cc-2024-10/held-out-river", "hash": "abc"}])
    with pytest.raises(ValidationError, match="has neither an 'id' nor a 'text_hash' column"):
        ExcludeConfig(list=str(list_path))
    graph = tmp_path / "graph.yaml"
    graph.write_text("stages:\n"
                     "  read: {stage: read_text, params: {paths: [docs.jsonl]}}\n"
                     f"  held_out: {{stage: exclude, input: read, params: {{list: '{list_path}'}}}}\n")
    with pytest.raises(GraphError) as raised:
        load_graph(graph, tmp_path / "run")
    message = str(raised.value)
    assert "\n" not in message and str(list_path) in message and "stages.held_out.params.list" in message


@pytest.mark.parametrize(("list_name", "content", "expected"), [
    ("missing.jsonl", None, "no such file"),
    ("broken.jsonl", b'{"id": "a"}\n{"id": "b"\n', "line 2 is not a JSON object"),
    ("array.jsonl", b'["a", "b"]\n', "line 1 is not a JSON object"),
    ("numbers.jsonl", b'{"id": 17}\n', "line 1: id is 17, not a string"),
    ("not_parquet.parquet", b"id\ncc-2024-10/held-out-river\n", "cannot read"),
    ("cut.jsonl.gz", gzip.compress(b'{"id": "a"}\n' * 100)[:30], "cannot read"),
    ("sha256.jsonl", json.dumps({"text_hash": "ab" * 32}).encode(), "is not 32 hex digits"),
])
def test_an_unusable_list_is_a_config_error_naming_the_file(tmp_path: Path, list_name: str, content: bytes | None,
                                                           expected: str) -> None:
    list_path = tmp_path / list_name
    if content is not None:
        list_path.write_bytes(content)
    with pytest.raises(ValidationError) as raised:
        ExcludeConfig(list=str(list_path))
    error = raised.value.errors()[0]
    assert error["loc"] == ("list",) and expected in error["msg"] and error["input"] == str(list_path)


def test_integer_ids_in_a_parquet_list_are_refused_rather_than_never_matching(tmp_path: Path) -> None:
    list_path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64())}), list_path)
    with pytest.raises(ValidationError, match="column 'id' holds int64, not strings"):
        ExcludeConfig(list=str(list_path))


def test_a_changed_list_changes_the_config_hash_so_old_output_is_not_reused(tmp_path: Path) -> None:
    list_path = held_out_list(tmp_path / "held_out.jsonl", HELD_OUT[:1])
    assert run_exclude(tmp_path, list_path).manifest().rejected == {"listed_id": 1, "listed_text": 1}
    graph = load_graph(tmp_path / "graph.yaml", tmp_path / "run")
    before = plan_graph(graph)[1].config_hash
    held_out_list(list_path, HELD_OUT)
    assert plan_graph(graph)[1].config_hash != before
    with pytest.raises(GraphError, match="different config"):
        run_exclude(tmp_path, list_path)
    assert run_exclude(tmp_path, list_path, run="again").manifest().rejected == {"listed_id": 2, "listed_text": 1}


def test_the_stage_is_installed_under_its_name() -> None:
    assert stage_class("exclude") is Exclude


LIST_FILES = itertools.count()
# Few distinct texts, so documents often share a text under different ids; None is a missing text.
TEXTS = st.one_of(st.none(), st.sampled_from(["", "a", "a ", "A", "é", "e\u0301", "the mill", "the mill."]),
                  st.text(max_size=20))


@settings(max_examples=60, deadline=None)
@given(
    documents=st.lists(TEXTS, min_size=0, max_size=25).map(
        lambda texts: [{"id": f"doc-{index}", "text": text} for index, text in enumerate(texts)]),
    listed_ids=st.sets(st.integers(0, 30), max_size=10),
    listed_texts=st.lists(TEXTS.filter(lambda text: text is not None), max_size=5),
    list_format=st.sampled_from(["jsonl", "parquet"]),
)
def test_kept_and_rejected_partition_the_input_and_nothing_kept_is_listed(
    tmp_path_factory, documents, listed_ids, listed_texts, list_format
) -> None:
    ids = sorted(f"doc-{index}" for index in listed_ids)
    hashes = [text_hash(text) for text in listed_texts]
    rows = [{"id": doc_id, "text_hash": None} for doc_id in ids] + [{"id": None, "text_hash": h} for h in hashes]
    if not rows:
        rows = [{"id": "nothing-listed", "text_hash": None}]
    list_path = write_list(tmp_path_factory.getbasetemp() / f"list-{next(LIST_FILES)}.{list_format}", rows)
    outcome = stage_for(list_path).process(batch_of(documents))

    kept = outcome.kept.to_pylist()
    rejected = outcome.rejected.to_pylist()
    assert sorted([doc["id"] for doc in kept] + [row["id"] for row in rejected]) == sorted(doc["id"] for doc in documents)
    assert len(kept) + len(rejected) == len(documents)
    for doc in kept:
        assert doc["id"] not in ids and (doc["text"] is None or text_hash(doc["text"]) not in hashes)
    text_of = {doc["id"]: doc["text"] for doc in documents}
    for row in rejected:
        expected = "listed_id" if row["id"] in ids else "listed_text"
        assert row["reason"] == expected and row["stage"] is None
        if expected == "listed_text":
            assert text_hash(text_of[row["id"]]) in hashes
