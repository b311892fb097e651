"""Tokenizing, Dataset Decomposition and its baselines, and the shuffled bucket export with `verify`.

A tiny byte-level BPE is trained on the standard library's pydoc topics (real English, offline)
once per module; decomposition invariants are checked on hand-made token lists and by hypothesis.
"""

from __future__ import annotations

import importlib.util
import json
import pydoc_data.topics
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.pipeline.cli.tokens import export, tokenizer, verify
from gristmill.pipeline.tokens.export import export_buckets, verify_export
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.tokens.indexed_dataset import IndexedDataset
from gristmill.pipeline.engine.runner import run_graph
from gristmill.stages.tokens.tokenization import (
    DEFAULT_EOS,
    TokenizerError,
    load_tokenizer,
    save_tokenizer,
    tokenizer_record,
    train_byte_level_bpe,
)
from gristmill.stages.tokens.decompose import (  # importing registers the stage
    Decompose,
    DecomposeConfig,
    best_fit_decreasing,
)
from gristmill.stages.tokens.tokenize import Tokenize, TokenizeConfig
from tests.conftest import data_files

PARAGRAPHS = [paragraph for topic in pydoc_data.topics.topics.values() for paragraph in topic.split("\n\n")
              if paragraph.strip()]


def documents_of_varied_length(count: int, seed: int) -> list[str]:
    """Runs of 1 to 30 consecutive pydoc paragraphs: documents from a few tokens to several thousand."""
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        start = rng.randrange(len(PARAGRAPHS))
        documents.append("\n\n".join(PARAGRAPHS[start:start + rng.choice([1, 2, 4, 10, 30])]))
    return documents


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_byte_level_bpe(PARAGRAPHS, vocab_size=1000), directory, DEFAULT_EOS, {"corpus": "pydoc"})
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    for part in range(2):
        texts = documents_of_varied_length(120, seed=part)
        with open(directory / f"part{part}.jsonl", "w") as handle:
            for index, text in enumerate(texts):
                source = "reference" if index % 3 else "tutorial"
                handle.write(json.dumps({"id": f"p{part}-{index}", "text": text, "source": source}) + "\n")
            handle.write(json.dumps({"id": f"p{part}-blank", "text": "   "}) + "\n")
    return directory


def write_tokens_graph(path: Path, corpus: Path, tokenizer: Path, decompose_params: str) -> Path:
    path.write_text(
        "plugins: [gristmill.stages.tokens.tokenize, gristmill.stages.tokens.decompose]\nstages:\n"
        f"  read:\n    stage: read_text\n    params: {{paths: ['{corpus}/*.jsonl']}}\n"
        f"  tokens:\n    stage: tokenize\n    input: read\n    params: {{tokenizer: '{tokenizer}'}}\n"
        f"  pieces:\n    stage: decompose\n    input: tokens\n    params: {decompose_params}\n"
    )
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus: Path, tokenizer_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("run")
    graph = write_tokens_graph(root / "g.yaml", corpus, tokenizer_dir, "{min_bucket: 5, max_bucket: 9}")
    run_graph(load_graph(graph, root / "out"), make_executor("inprocess"))
    return root / "out"


# --- tokenizers -------------------------------------------------------------------------------


def test_load_tokenizer_from_file_or_directory_finds_eos_and_a_stable_fingerprint(tokenizer_dir: Path) -> None:
    from_directory = load_tokenizer(tokenizer_dir)
    from_file = load_tokenizer(tokenizer_dir / "tokenizer.json")
    assert from_directory.eos_token == DEFAULT_EOS and from_directory.eos_id == 0
    assert from_directory.vocab_size == 1000
    assert from_directory.fingerprint == from_file.fingerprint
    other = train_byte_level_bpe(PARAGRAPHS, vocab_size=900)
    other_dir = tokenizer_dir.parent / "other-tokenizer"
    assert save_tokenizer(other, other_dir, DEFAULT_EOS, {}).fingerprint != from_directory.fingerprint
    assert json.loads((tokenizer_dir / "training.json").read_text())["tokenizer"]["vocab_size"] == 1000


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_a_directory_without_tokenizer_json_loads_through_transformers(tmp_path: Path, tokenizer_dir: Path) -> None:
    original = load_tokenizer(tokenizer_dir)
    original.tokenizer.model.save(str(tmp_path))  # GPT-2 style vocab.json + merges.txt
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "eos_token": DEFAULT_EOS, "add_prefix_space": False}))
    converted = load_tokenizer(tmp_path)
    text = "class Mill:\n    def grind(self): return 'flour'  # naïve"
    assert converted.encode([text]).to_pylist() == original.encode([text]).to_pylist()
    assert (converted.eos_token, converted.eos_id) == (DEFAULT_EOS, 0)


def test_training_is_deterministic(tokenizer_dir: Path) -> None:
    again = train_byte_level_bpe(PARAGRAPHS, vocab_size=1000)
    assert json.loads(again.to_str()) == json.loads((tokenizer_dir / "tokenizer.json").read_text())


def test_missing_tokenizer_or_eos_is_a_clear_error(tmp_path: Path, tokenizer_dir: Path) -> None:
    with pytest.raises(TokenizerError, match="never downloaded"):
        load_tokenizer(tmp_path / "gpt2")
    with pytest.raises(TokenizerError, match="no EOS token among <eos>"):
        load_tokenizer(tokenizer_dir, eos_token="<eos>")


def test_encode_appends_eos_and_round_trips_unicode(tokenizer_dir: Path) -> None:
    loaded = load_tokenizer(tokenizer_dir)
    texts = ["def f(x):\n    return x", "naïve café — 東京 🚀", ""]
    encoded = loaded.encode(texts)
    assert encoded.type == pa.list_(pa.uint32())
    for text, ids in zip(texts, encoded.to_pylist()):
        assert ids[-1] == loaded.eos_id and loaded.eos_id not in ids[:-1]
        assert ids[:-1] == loaded.tokenizer.encode(text, add_special_tokens=False).ids
        assert loaded.decode(ids) == text
    assert encoded.to_pylist()[2] == [loaded.eos_id]


def test_tokenize_stage_rejects_empty_text_and_records_the_tokenizer(tokenizer_dir: Path) -> None:
    stage = Tokenize(TokenizeConfig(tokenizer=str(tokenizer_dir)))
    stage.setup()
    batch = pa.RecordBatch.from_pylist(
        [{"id": "a", "text": "Hello world."}, {"id": "b", "text": ""}, {"id": "c", "text": None}], schema=DOCUMENT_SCHEMA
    )
    result = stage.process(batch)
    assert result.kept.column("id").to_pylist() == ["a"]
    assert result.rejected.column("reason").to_pylist() == ["empty_text", "empty_text"]
    assert result.kept.column("num_tokens").to_pylist() == [len(result.kept.column("tokens")[0])]
    record = tokenizer_record(stage.output_schema(DOCUMENT_SCHEMA))
    assert record["fingerprint"] == load_tokenizer(tokenizer_dir).fingerprint and record["eos_id"] == 0


def test_tokenizer_train_command_samples_a_dataset(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(tokenizer, ["train", "--input", str(run_dir / "read"), "--vocab-size", "600",
                                            "--output", str(tmp_path / "tok"), "--sample-bytes", "50000"])
    assert result.exit_code == 0, result.output
    training = json.loads((tmp_path / "tok" / "training.json").read_text())
    assert 50_000 <= training["sample_bytes"] < 50_000 + max(map(len, documents_of_varied_length(120, 0))) * 4
    assert load_tokenizer(tmp_path / "tok").vocab_size == 600
    assert "fingerprint xxh3_128:" in result.output


# --- decomposition on hand-made token lists ---------------------------------------------------------


def token_batch(lengths: list[int], ids: list[str] | None = None) -> pa.RecordBatch:
    """Document i holds tokens 1000*i, 1000*i + 1, ... so every piece shows where it came from."""
    return pa.RecordBatch.from_pydict({
        "id": ids or [f"d{index}" for index in range(len(lengths))],
        "tokens": pa.array([list(range(1000 * index, 1000 * index + length)) for index, length in enumerate(lengths)],
                           pa.list_(pa.uint32())),
        "source": ["s"] * len(lengths),
    })


def pieces_of(result) -> list[tuple]:
    table = result.kept.drop_columns(["tokens", "source"]).to_pylist()
    return [(row["document_id"], row["chunk_index"], row["token_start"], row["segment"], row["bucket"],
             row["num_tokens"], row["dropped_tokens"]) for row in table]


def test_binary_decomposition_of_a_hand_checked_batch() -> None:
    stage = Decompose(DecomposeConfig(min_bucket=2, max_bucket=4))
    # 40 = 17 + 17 + 5 + 1 dropped; 12 = 9 + 3 dropped; 3 < 5 is rejected; 0 has no tokens.
    result = stage.process(token_batch([40, 12, 3, 0]))
    assert pieces_of(result) == [
        ("d0", 0, 0, 0, 4, 17, 1), ("d0", 1, 17, 0, 4, 17, 0), ("d0", 2, 34, 0, 2, 5, 0),
        ("d1", 0, 0, 0, 3, 9, 3),
    ]
    assert result.kept.column("tokens")[2].as_py() == list(range(34, 39))
    assert result.rejected.to_pylist() == [
        {"id": "d2", "stage": None, "reason": "shorter_than_min_bucket", "detail": "num_tokens=3 < 5"},
        {"id": "d3", "stage": None, "reason": "no_tokens", "detail": None},
    ]


def test_packed_remainders_keep_every_token_with_segment_boundaries() -> None:
    stage = Decompose(DecomposeConfig(min_bucket=2, max_bucket=4, remainders="pack"))
    result = stage.process(token_batch([40, 12, 3]))
    # Remainders 1 (d0), 3 (d1) and the whole of d2 (3) go best-fit into 5-token sequences:
    # 3 (d1) opens one, 3 (d2) opens a second, 1 (d0) fills the fuller of the two, d1's.
    assert pieces_of(result)[4:] == [("d1", 1, 9, 0, 2, 3, 0), ("d0", 3, 39, 1, 2, 1, 0), ("d2", 0, 0, 0, 2, 3, 0)]
    assert result.rejected.num_rows == 0


def test_best_fit_decreasing_fills_the_fullest_bin_that_fits() -> None:
    assert best_fit_decreasing(np.array([3, 8, 5, 6, 4]), 9).tolist() == [1, 0, 2, 1, 2]


def test_concat_chunk_cuts_the_concatenation_every_capacity_tokens() -> None:
    stage = Decompose(DecomposeConfig(mode="concat_chunk", sequence_length=8))
    result = stage.process(token_batch([3, 5, 6, 17, 0]))
    sequence_sizes = []
    for segment, length in zip(result.kept.column("segment").to_pylist(), result.kept.column("num_tokens").to_pylist()):
        if segment == 0:
            sequence_sizes.append(0)
        sequence_sizes[-1] += length
    assert sequence_sizes == [9, 9, 9, 4]
    flat = [token for tokens in result.kept.column("tokens").to_pylist() for token in tokens]
    assert flat == [*range(3), *range(1000, 1005), *range(2000, 2006), *range(3000, 3017)]
    assert set(result.kept.column("bucket").to_pylist()) == {3}
    assert result.rejected.column("reason").to_pylist() == ["no_tokens"]


def test_random_long_document_cuts_are_seeded_by_document_id() -> None:
    config = {"min_bucket": 2, "max_bucket": 3, "long_documents": "random"}
    batch = token_batch([100, 100, 60], ids=["a", "b", "c"])
    first = pieces_of(Decompose(DecomposeConfig(**config)).process(batch))
    again = pieces_of(Decompose(DecomposeConfig(**config)).process(token_batch([100], ids=["a"])))
    assert [piece for piece in first if piece[0] == "a"] == again
    reseeded = pieces_of(Decompose(DecomposeConfig(**config, seed=7)).process(batch))
    assert reseeded != first
    assert all(2 <= piece[4] <= 3 for piece in first)


@st.composite
def decompose_cases(draw):
    lengths = draw(st.lists(st.integers(0, 700), min_size=1, max_size=25))
    mode = draw(st.sampled_from(["decompose", "concat_chunk", "best_fit"]))
    if mode == "decompose":
        min_bucket = draw(st.integers(0, 5))
        options = {"min_bucket": min_bucket, "max_bucket": draw(st.integers(min_bucket, 7)),
                   "long_documents": draw(st.sampled_from(["max_bucket", "random"])),
                   "remainders": draw(st.sampled_from(["drop", "pack"]))}
    else:
        options = {"sequence_length": 1 << draw(st.integers(0, 7))}
    return lengths, DecomposeConfig(mode=mode, **options)


@settings(max_examples=150, deadline=None)
@given(case=decompose_cases())
def test_every_piece_is_a_slice_of_one_document_and_tokens_are_conserved(case) -> None:
    lengths, config = case
    result = Decompose(config).process(token_batch(lengths))
    rows = result.kept.to_pylist()
    rejected = dict(zip(result.rejected.column("id").to_pylist(), result.rejected.column("reason").to_pylist()))
    by_document = defaultdict(list)
    for row in rows:
        index = int(row["document_id"][1:])
        start = row["token_start"]
        assert row["tokens"] == list(range(1000 * index + start, 1000 * index + start + row["num_tokens"]))
        by_document[index].append(row)
    assert set(by_document).isdisjoint(int(name[1:]) for name in rejected)
    assert len(by_document) + len(rejected) == len(lengths)
    shortest = (1 << config.min_bucket) + 1
    capacity = (1 << config.max_bucket) + 1 if config.mode == "decompose" else config.sequence_length + 1
    for index, length in enumerate(lengths):
        if length == 0:
            assert rejected[f"d{index}"] == "no_tokens"
            continue
        if f"d{index}" in rejected:
            assert (config.mode, config.remainders, rejected[f"d{index}"]) == ("decompose", "drop", "shorter_than_min_bucket")
            assert length < shortest
            continue
        pieces = sorted(by_document[index], key=lambda row: row["chunk_index"])
        assert [row["chunk_index"] for row in pieces] == list(range(len(pieces)))
        starts = [row["token_start"] for row in pieces]
        assert starts == [sum(row["num_tokens"] for row in pieces[:position]) for position in range(len(pieces))]
        kept = sum(row["num_tokens"] for row in pieces)
        assert kept + pieces[0]["dropped_tokens"] == length
        if config.mode == "decompose" and config.remainders == "drop":
            assert pieces[0]["dropped_tokens"] < shortest
        else:
            assert pieces[0]["dropped_tokens"] == 0
    sequences: list[list[dict]] = []
    for row in rows:
        if row["segment"] == 0:
            sequences.append([])
        sequences[-1].append(row)
    for sequence in sequences:
        assert [row["segment"] for row in sequence] == list(range(len(sequence)))
        size = sum(row["num_tokens"] for row in sequence)
        assert size <= capacity
        if config.mode == "decompose" and len(sequence) == 1 and sequence[0]["num_tokens"] >= shortest:
            assert sequence[0]["num_tokens"] == (1 << sequence[0]["bucket"]) + 1
            assert config.min_bucket <= sequence[0]["bucket"] <= config.max_bucket


@pytest.mark.parametrize("mode, options, field", [
    ("decompose", {"sequence_length": 512}, "sequence_length"),
    ("concat_chunk", {"max_bucket": 9}, "max_bucket"),
    ("best_fit", {"remainders": "pack"}, "remainders"),
    ("best_fit", {"seed": 3}, "seed"),
])
def test_config_refuses_options_of_another_mode(mode: str, options: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} applies to mode.*it would be ignored"):
        DecomposeConfig(mode=mode, **options)
    assert DecomposeConfig.model_validate(DecomposeConfig(mode=mode).model_dump(mode="json")).mode == mode


def test_config_refuses_inverted_buckets_and_odd_lengths() -> None:
    with pytest.raises(ValueError, match="max_bucket must be at least min_bucket"):
        DecomposeConfig(min_bucket=9, max_bucket=8)
    with pytest.raises(ValueError, match="power of two"):
        DecomposeConfig(mode="concat_chunk", sequence_length=3000)


# --- the real pipeline ------------------------------------------------------------------------------


def test_decoding_each_documents_pieces_gives_back_its_text_apart_from_counted_remainders(
        run_dir: Path, tokenizer_dir: Path) -> None:
    loaded = load_tokenizer(tokenizer_dir)
    documents = pl.read_parquet(run_dir / "tokens" / "*.parquet")
    pieces = pl.read_parquet(run_dir / "pieces" / "*.parquet").sort("document_id", "chunk_index")
    grouped = {key[0]: frame for key, frame in pieces.group_by("document_id")}
    rejected = pl.read_parquet(run_dir / "pieces" / "_rejects" / "*.parquet")
    assert set(rejected["reason"]) == {"shorter_than_min_bucket"}
    assert set(grouped) | set(rejected["id"]) == set(documents["id"])
    checked = 0
    for document in documents.iter_rows(named=True):
        if document["id"] not in grouped:
            assert document["num_tokens"] < 33
            continue
        frame = grouped[document["id"]]
        kept = [token for tokens in frame["tokens"].to_list() for token in tokens]
        dropped = frame["dropped_tokens"][0]
        assert kept + document["tokens"][len(kept):] == document["tokens"]
        assert len(document["tokens"]) - len(kept) == dropped
        assert loaded.decode(kept + document["tokens"][len(kept):]) == document["text"]
        checked += 1
    assert checked > 150
    read = Dataset(run_dir / "read").manifest()
    assert read.rejected == {}  # blank texts pass read_text and are caught by tokenize
    assert Dataset(run_dir / "tokens").manifest().rejected == {}


@pytest.mark.slow
def test_inprocess_and_dask_write_identical_bytes(tmp_path: Path, corpus: Path, tokenizer_dir: Path, run_dir: Path) -> None:
    graph = write_tokens_graph(tmp_path / "g.yaml", corpus, tokenizer_dir, "{min_bucket: 5, max_bucket: 9}")
    with make_executor("dask", 2) as executor:
        run_graph(load_graph(graph, tmp_path / "dask"), executor)
    for node in ("tokens", "pieces"):
        assert data_files(tmp_path / "dask" / node) == data_files(run_dir / node)


# --- export and verify ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("export")
    export_buckets(run_dir / "pieces", output, seed=3)
    return output


def bucket_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("bucket-*"))}


def test_export_holds_every_piece_once_in_its_bucket_with_exact_totals(exported: Path, run_dir: Path) -> None:
    pieces = pl.read_parquet(run_dir / "pieces" / "*.parquet")
    documents = pl.read_parquet(run_dir / "tokens" / "*.parquet")
    stats = json.loads((exported / "stats.json").read_text())
    rejected_tokens = documents.filter(~pl.col("id").is_in(pieces["document_id"].unique().implode()))["num_tokens"].sum()
    assert stats["document_tokens"] == documents["num_tokens"].sum()
    assert stats["tokens"] == stats["document_tokens"] - stats["dropped_tokens"]["total"] == pieces["num_tokens"].sum()
    assert stats["dropped_tokens"]["short_documents"] == rejected_tokens
    tokens_by_id = dict(zip(documents["id"].to_list(), documents["tokens"].to_list()))
    seen = set()
    for bucket, tokens, count in pieces.group_by("bucket").agg(pl.col("num_tokens").sum(), pl.len()).iter_rows():
        sidecar = json.loads((exported / f"bucket-{bucket:02d}.json").read_text())
        assert (sidecar["tokens"], sidecar["sequences"], sidecar["capacity"]) == (tokens, count, (1 << bucket) + 1)
        dataset = IndexedDataset(exported / f"bucket-{bucket:02d}")
        table = pl.read_parquet(exported / f"bucket-{bucket:02d}.sequences.parquet")
        assert dataset.num_documents == len(table) == stats["buckets"][str(bucket)]["sequences"]
        assert dataset.num_tokens == stats["buckets"][str(bucket)]["tokens"] == sidecar["tokens"]
        for index, row in enumerate(table.iter_rows(named=True)):
            source_tokens = tokens_by_id[row["document_id"]]
            sequence = dataset.document(index).tolist()
            assert sequence == source_tokens[row["token_start"]:row["token_start"] + len(sequence)]
            assert len(sequence) == (1 << bucket) + 1
            seen.add((row["document_id"], row["chunk_index"]))
    assert seen == set(pieces.select("document_id", "chunk_index").iter_rows())
    lengths = pieces["num_tokens"].to_numpy().astype(np.int64)
    assert stats["average_context_length"] == round(float(np.sum(lengths * (lengths - 1) / 2) / lengths.sum()), 3)
    assert sum(stats["sources"].values()) == stats["tokens"] and set(stats["sources"]) == {"reference", "tutorial"}


def test_export_is_deterministic_by_seed_and_independent_of_memory(exported: Path, run_dir: Path, tmp_path: Path) -> None:
    export_buckets(run_dir / "pieces", tmp_path / "again", seed=3, memory_bytes=1 << 10)  # many spill partitions
    assert bucket_files(tmp_path / "again") == bucket_files(exported)
    export_buckets(run_dir / "pieces", tmp_path / "reseeded", seed=4)
    reseeded = IndexedDataset(tmp_path / "reseeded" / "bucket-09")
    original = IndexedDataset(exported / "bucket-09")
    order = [reseeded.document(i).tobytes() for i in range(reseeded.num_documents)]
    assert order != [original.document(i).tobytes() for i in range(original.num_documents)]
    assert sorted(order) == sorted(original.document(i).tobytes() for i in range(original.num_documents))


def test_packed_baseline_exports_document_boundaries(run_dir: Path, tmp_path: Path) -> None:
    graph = tmp_path / "g.yaml"  # decompose the module run's tokenized dataset again, as a baseline
    graph.write_text("plugins: [gristmill.stages.tokens.decompose]\nstages:\n  pieces:\n    stage: decompose\n"
                     f"    input: '{run_dir / 'tokens'}'\n    params: {{mode: best_fit, sequence_length: 512}}\n")
    run_graph(load_graph(graph, tmp_path / "run"), make_executor("inprocess"))
    stats = export_buckets(tmp_path / "run" / "pieces", tmp_path / "export", seed=0)
    dataset = IndexedDataset(tmp_path / "export" / "bucket-09")
    documents = pl.read_parquet(run_dir / "tokens" / "*.parquet")
    assert stats["tokens"] == documents["num_tokens"].sum() and stats["dropped_tokens"]["total"] == 0
    boundaries = [dataset.document_sequence_lengths(i) for i in range(dataset.num_documents)]
    assert max(lengths.sum() for lengths in boundaries) <= 513
    assert any(len(lengths) > 1 for lengths in boundaries)
    assert verify_export(tmp_path / "export")[0].problems == []


def test_verify_passes_a_fresh_export_and_names_damage(exported: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(verify, ["--input", str(exported), "--samples", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.count(": ok") == 5 and result.output.count("sequence ") == 10
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in exported.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    data = bytearray((damaged / "bucket-07.bin").read_bytes())
    data[10] ^= 0xFF
    (damaged / "bucket-07.bin").write_bytes(bytes(data))
    (damaged / "bucket-08.idx").write_bytes((damaged / "bucket-08.idx").read_bytes()[:-8])
    result = CliRunner().invoke(verify, ["--input", str(damaged)])
    assert result.exit_code == 1
    assert "bucket-07: FAILED\n  problem: bucket-07.bin: checksum differs from the sidecar" in result.output
    assert "bucket-08: FAILED\n  problem:" in result.output and "header implies" in result.output


def test_export_command_prints_the_bucket_table(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(export, ["--input", str(run_dir / "pieces"), "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert f"{stats['tokens']:>14,}" in result.output
    assert f"dropped {stats['dropped_tokens']['total']:,} of {stats['document_tokens']:,}" in result.output
    refused = CliRunner().invoke(export, ["--input", str(run_dir / "read"), "--output", str(tmp_path / "bad")])
    assert refused.exit_code == 2 and "not a decomposed dataset" in refused.output
    again = CliRunner().invoke(export, ["--input", str(run_dir / "pieces"), "--output", str(tmp_path / "out")])
    assert again.exit_code == 2 and "not empty" in again.output
