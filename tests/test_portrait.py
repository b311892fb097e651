"""Data portraits: no false negatives at any alignment, the design false-positive rate, merging, the file format,
the commands, the sketch written beside an export, and decontamination against a shipped sketch."""

from __future__ import annotations

import json
import pydoc_data.topics
import random
import string
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.pipeline.cli.main import cli
from gristmill.pipeline.cli.portrait import portrait as portrait_command
from gristmill.pipeline.cli.tokens import export as export_command
from gristmill.pipeline.engine.dataset import Dataset, file_checksum
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.tokens.export import PORTRAIT_FILE, export_buckets, verify_export
from gristmill.stages.dedup.decontaminate import (  # importing registers the stage
    BENCHMARK_COLUMN,
    NGRAMS_COLUMN,
    DecontaminateConfig,
    decontamination_report,
)
from gristmill.stages.dedup.portrait import (
    MULTIPLIER,
    WIDTH,
    Portrait,
    PortraitError,
    TextSource,
    build_portrait,
    code_points,
    count_windows,
    dataset_source,
    design_fpr,
    normalise,
    read_portrait,
    size_for,
    window_hashes,
)
from gristmill.stages.tokens.tokenization import DEFAULT_EOS, save_tokenizer, train_byte_level_bpe

PARAGRAPHS = [paragraph.strip() for topic in pydoc_data.topics.topics.values() for paragraph in topic.split("\n\n")
              if len(paragraph.strip()) > 200]


def random_text(rng: random.Random, characters: int) -> str:
    return "".join(rng.choices(string.ascii_lowercase + "    ", k=characters))


def text_list(texts: list[str]) -> TextSource:
    return TextSource("texts", lambda: iter([pa.array(texts, pa.large_string())]))


def sketch_of(texts: list[str], target_fpr: float = 0.01, capacity: int | None = None, seed: int = 0) -> Portrait:
    return build_portrait([text_list(texts)], target_fpr, capacity, seed)


def normalised(text: str) -> str:
    return normalise(pa.array([text]))[0].as_py()


def write_dataset(root: Path, name: str, shards: list[list[str]]) -> Path:
    """A Gristmill dataset of the texts (one read_text shard per list), made by a real graph run."""
    source = root / f"{name}-jsonl"
    source.mkdir(parents=True)
    for index, texts in enumerate(shards):
        (source / f"part{index}.jsonl").write_text("".join(
            json.dumps({"id": f"{name}-{index}-{row}", "text": text}) + "\n" for row, text in enumerate(texts)))
    graph = root / f"{name}.yaml"
    graph.write_text(f"stages:\n  {name}:\n    stage: read_text\n    params: {{paths: ['{source}/*.jsonl']}}\n")
    run_graph(load_graph(graph, root / "datasets"), make_executor("inprocess"))
    return root / "datasets" / name


# ---------------------------------------------------------------- windows and hashes


def test_window_hashes_are_the_polynomial_of_the_code_points_at_any_start() -> None:
    text = normalise(pa.array(["Naïve  café —\tÉTÉ 東京 🚀 " * 12]))
    normalised = text[0].as_py()
    assert "  " not in normalised and normalised == normalised.strip() and normalised == normalised.lower()
    starts = np.arange(0, len(normalised) - WIDTH + 1, 7)
    expected = [sum(ord(character) * pow(int(MULTIPLIER), j, 1 << 64) for j, character in
                    enumerate(normalised[start:start + WIDTH])) % (1 << 64) for start in starts.tolist()]
    assert window_hashes(code_points(text), starts).tolist() == expected


def test_sizing_follows_the_formula_in_whole_words() -> None:
    bits, hashes = size_for(10_000, 0.01)
    assert bits % 64 == 0 and bits - 64 < 10_000 * np.log(100) / np.log(2) ** 2 <= bits
    assert hashes == 7 and design_fpr(bits, hashes, 10_000) == pytest.approx(0.01, rel=0.01)


# ---------------------------------------------------------------- no false negatives, design FPR


ALPHABET = "abcdeé東 \n\t"


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.text(ALPHABET, min_size=0, max_size=400), min_size=1, max_size=6), data=st.data())
def test_any_stretch_of_trained_text_is_found_whatever_its_alignment(texts: list[str], data) -> None:
    sketch = sketch_of(texts)
    text = data.draw(st.sampled_from(normalise(pa.array(texts)).to_pylist()))
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, len(text)))
    while start < end and text[start] == " ":  # a query is trimmed when normalised
        start += 1
    while end > start and text[end - 1] == " ":
        end -= 1
    aligned = [begin for begin in range(0, len(text) - WIDTH + 1, WIDTH) if start <= begin and begin + WIDTH <= end]
    answer = sketch.match_text(text[start:end])
    assert answer["longest_span"]["characters"] >= WIDTH * len(aligned)
    assert answer["found"] >= ((len(aligned) - 1) * WIDTH + 1 if aligned else 0)


def test_the_false_positive_rate_on_unseen_random_text_is_the_design_rate() -> None:
    rng = random.Random(7)
    trained = [random_text(rng, 5_000) for _ in range(200)]  # ~20k windows
    sketch = sketch_of(trained, target_fpr=0.01)
    unseen = sketch.match([random_text(rng, 10_000) for _ in range(20)])  # ~200k windows, every offset
    measured = unseen.hits.sum() / unseen.windows.sum()
    design = sketch.summary()["design_fpr"]
    assert abs(measured - design) < 0.2 * design, (measured, design)
    assert sketch.fill_fpr == pytest.approx(design, rel=0.05)
    assert unseen.longest.max() <= 2  # chance rarely puts two hits exactly 50 characters apart


def test_bulk_lookups_probe_bit_by_bit_and_answer_as_single_queries_do() -> None:
    rng = np.random.default_rng(5)
    sketch = sketch_of([random_text(random.Random(5), 20_000)], target_fpr=0.2)  # dense: many windows probe far
    values = rng.integers(0, 2**63, 150_000, dtype=np.uint64)
    in_bulk = sketch.contains(values)  # blocks of 65,536, one probe at a time
    one_by_one = np.concatenate([sketch.contains(values[start:start + 1000]) for start in range(0, len(values), 1000)])
    assert np.array_equal(in_bulk, one_by_one) and 0.1 < in_bulk.mean() < 0.3


def test_a_trained_text_is_found_whole_and_its_longest_span_is_its_own_text() -> None:
    sketch = sketch_of(PARAGRAPHS[:50])
    paragraph = PARAGRAPHS[10]
    answer = sketch.match_text("Some new words first. " + paragraph.upper() + " and a new ending.")
    text = normalised(paragraph)
    assert answer["longest_span"]["characters"] == len(text) // WIDTH * WIDTH
    assert answer["longest_span"]["text"] == text[:len(text) // WIDTH * WIDTH]
    assert sketch.match_text(paragraph)["share"] >= (len(text) - 2 * WIDTH + 2) / (len(text) - WIDTH + 1)


# ---------------------------------------------------------------- datasets, merging, bytes


@pytest.fixture(scope="module")
def shard_datasets(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("datasets")
    return (write_dataset(root, "alpha", [PARAGRAPHS[0:60], PARAGRAPHS[60:120]]),
            write_dataset(root, "beta", [PARAGRAPHS[120:200]]))


def test_a_sketch_of_two_datasets_answers_for_text_from_either_and_not_for_others(shard_datasets, tmp_path) -> None:
    sketch = build_portrait([dataset_source(path) for path in shard_datasets], 1e-3)
    for paragraph in (PARAGRAPHS[5], PARAGRAPHS[90], PARAGRAPHS[150]):
        text = normalised(paragraph)
        assert sketch.match_text(text[17:])["longest_span"]["characters"] >= (len(text) // WIDTH - 1) * WIDTH
    assert sketch.match_text(random_text(random.Random(1), 2000))["longest_span"]["characters"] <= WIDTH
    assert [source["name"] for source in sketch.header["sources"]] == ["alpha", "beta"]
    assert sketch.header["texts"] == 200
    assert sketch.header["sources"][0]["config_hash"] == Dataset(shard_datasets[0]).manifest().config_hash


def test_merging_equals_building_on_the_union_byte_for_byte(shard_datasets, tmp_path) -> None:
    capacity = sum(count_windows(dataset_source(path).batches()) for path in shard_datasets)
    union = build_portrait([dataset_source(path) for path in shard_datasets], 1e-3)
    assert union.header["capacity"] == capacity
    parts = [build_portrait([dataset_source(path)], 1e-3, capacity) for path in shard_datasets]
    union.write(tmp_path / "union.bloom")
    parts[0].merge(parts[1]).write(tmp_path / "merged.bloom")
    assert (tmp_path / "merged.bloom").read_bytes() == (tmp_path / "union.bloom").read_bytes()


def test_the_same_input_and_config_give_the_same_bytes_and_a_new_seed_other_bits(shard_datasets, tmp_path) -> None:
    for name in ("one", "two"):
        build_portrait([dataset_source(shard_datasets[1])], 1e-3).write(tmp_path / f"{name}.bloom")
    assert (tmp_path / "one.bloom").read_bytes() == (tmp_path / "two.bloom").read_bytes()
    reseeded = build_portrait([dataset_source(shard_datasets[1])], 1e-3, seed=1)
    assert not np.array_equal(reseeded.bits, read_portrait(tmp_path / "one.bloom").bits)


def test_sketches_built_differently_are_not_merged_and_the_field_is_named() -> None:
    small, large = sketch_of(PARAGRAPHS[:5], capacity=1000), sketch_of(PARAGRAPHS[:5], capacity=2000)
    with pytest.raises(PortraitError, match=r"^b.bloom: capacity is 2000, expected 1000; only sketches built alike merge$"):
        small.merge(large, "b.bloom")
    with pytest.raises(PortraitError, match="seed is 1, expected 0"):
        small.merge(sketch_of(PARAGRAPHS[:5], capacity=1000, seed=1))


def test_a_damaged_sketch_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "good.bloom"
    sketch_of(PARAGRAPHS[:20]).write(path)
    content = path.read_bytes()
    damaged = {
        "flipped.bloom": content[:-10] + bytes([content[-10] ^ 1]) + content[-9:],
        "short.bloom": content[:-3],
        "long.bloom": content + b"\0",
        "text.bloom": b"just some text, not a sketch at all",
        "header.bloom": content[:20] + b"#" + content[21:],
    }
    expected = {"flipped.bloom": "checksum differs from its header (damaged)", "short.bloom": "cut short or damaged",
                "long.bloom": "cut short or damaged", "text.bloom": "not a Gristmill portrait",
                "header.bloom": "damaged header"}
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PortraitError) as raised:
            read_portrait(tmp_path / name)
        assert expected[name] in str(raised.value) and "\n" not in str(raised.value)
    result = CliRunner().invoke(portrait_command, ["query", "--input", str(tmp_path / "flipped.bloom"), "--text", "-"],
                                input="anything")
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert result.output.startswith(f"error: {tmp_path / 'flipped.bloom'}: checksum differs")


# ---------------------------------------------------------------- the commands


def test_build_query_and_merge_commands(shard_datasets, tmp_path: Path) -> None:
    runner = CliRunner()
    alpha, beta = (str(path) for path in shard_datasets)
    built = runner.invoke(portrait_command, ["build", "--input", alpha, beta, "--output", str(tmp_path / "ab.bloom")])
    assert built.exit_code == 0, built.output
    assert "n-grams" in built.output and "design" in built.output and "% of the text" in built.output
    (tmp_path / "query.txt").write_text("An opening line of our own. " + PARAGRAPHS[150])
    answer = runner.invoke(portrait_command, ["query", "--input", str(tmp_path / "ab.bloom"),
                                              "--text", str(tmp_path / "query.txt"), "--json"])
    assert answer.exit_code == 0, answer.output
    found = json.loads(answer.output)
    text = normalised(PARAGRAPHS[150])
    assert found["found"] >= (len(text) // WIDTH - 1) * WIDTH + 1 and found["longest_span"]["text"] in text
    from_stdin = runner.invoke(portrait_command, ["query", "--input", str(tmp_path / "ab.bloom"), "--text", "-"],
                               input=PARAGRAPHS[400])
    assert from_stdin.exit_code == 0 and "longest matched span" in from_stdin.output

    capacity = str(json.loads(runner.invoke(portrait_command, ["build", "--input", alpha, beta, "--output",
                                                               str(tmp_path / "again.bloom"), "--json"]).output)["capacity"])
    for name, path in (("a", alpha), ("b", beta)):
        result = runner.invoke(portrait_command, ["build", "--input", path, "--capacity", capacity, "--output",
                                                  str(tmp_path / f"{name}.bloom")])
        assert result.exit_code == 0, result.output
    merged = runner.invoke(portrait_command, ["merge", "--input", str(tmp_path / "a.bloom"), str(tmp_path / "b.bloom"),
                                              "--output", str(tmp_path / "merged.bloom")])
    assert merged.exit_code == 0, merged.output
    assert (tmp_path / "merged.bloom").read_bytes() == (tmp_path / "ab.bloom").read_bytes()
    mismatch = runner.invoke(portrait_command, ["build", "--input", alpha, "--output", str(tmp_path / "other.bloom")])
    assert mismatch.exit_code == 0
    refused = runner.invoke(portrait_command, ["merge", "--input", str(tmp_path / "a.bloom"),
                                               str(tmp_path / "other.bloom"), "--output", str(tmp_path / "x.bloom")])
    assert refused.exit_code == 2 and "capacity is" in refused.output and refused.output.count("\n") == 1
    assert "build" in CliRunner().invoke(cli, ["portrait", "--help"]).output  # a `gristmill` subcommand
    (tmp_path / "notes.txt").write_text("mine")
    clobber = runner.invoke(portrait_command, ["build", "--input", alpha, "--output", str(tmp_path / "notes.txt")])
    assert clobber.exit_code == 2 and "is not a sketch" in clobber.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_build_takes_benchmark_item_files_with_fields(tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"question": PARAGRAPHS[index], "answer": str(index)}) + "\n"
                             for index in range(10)))
    result = CliRunner().invoke(portrait_command, ["build", "--input", str(items), "--field", "question",
                                                   "--field", "answer", "--output", str(tmp_path / "items.bloom")])
    assert result.exit_code == 0, result.output
    sketch = read_portrait(tmp_path / "items.bloom")
    assert sketch.header["texts"] == 10 and sketch.header["sources"] == [{"name": "items.jsonl", "config_hash": None,
                                                                         "texts": 10}]


# ---------------------------------------------------------------- beside an export


@pytest.fixture(scope="module")
def decomposed(tmp_path_factory) -> Path:
    """read_text -> tokenize -> decompose over pydoc paragraphs, with a small BPE trained on them."""
    root = tmp_path_factory.mktemp("tokens")
    tokenizer = root / "tokenizer"
    save_tokenizer(train_byte_level_bpe(PARAGRAPHS, vocab_size=600), tokenizer, DEFAULT_EOS, {"corpus": "pydoc"})
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "part0.jsonl").write_text("".join(json.dumps({"id": f"d{index}", "text": "\n\n".join(PARAGRAPHS[index:index + 4])})
                                                + "\n" for index in range(0, 240, 4)))
    graph = root / "g.yaml"
    graph.write_text(
        "stages:\n"
        f"  read:\n    stage: read_text\n    params: {{paths: ['{corpus}/*.jsonl']}}\n"
        f"  tokens:\n    stage: tokenize\n    input: read\n    params: {{tokenizer: '{tokenizer}'}}\n"
        "  pieces:\n    stage: decompose\n    input: tokens\n    params: {min_bucket: 5, max_bucket: 8}\n"
        "  pieces_with_text:\n    stage: decompose\n    input: tokens\n"
        "    params: {min_bucket: 5, max_bucket: 8, keep_columns: [text]}\n")
    run_graph(load_graph(graph, root / "run"), make_executor("inprocess"))
    return root / "run"


def test_export_writes_the_sketch_beside_the_buckets_and_records_it(decomposed: Path, tmp_path: Path) -> None:
    stats = export_buckets(decomposed / "pieces", tmp_path / "export", portrait_fpr=1e-3)
    record = stats["portrait"]
    path = tmp_path / "export" / PORTRAIT_FILE
    assert json.loads((tmp_path / "export" / "stats.json").read_text())["portrait"] == record
    assert record["path"] == PORTRAIT_FILE and record["bytes"] == path.stat().st_size
    assert record["checksum"] == file_checksum(path) and record["text_from"] == "decoded tokens"
    assert record["target_fpr"] == 1e-3 and record["design_fpr"] <= 1.01e-3 and record["ngrams"] > 0
    sketch = read_portrait(path)
    assert sketch.header["sources"][0]["config_hash"] == Dataset(decomposed / "pieces").manifest().config_hash
    # A document's text is found as long as its exported pieces; its dropped remainder need not be.
    kept = sketch.match_text(PARAGRAPHS[0] + "\n\n" + PARAGRAPHS[1])
    assert kept["longest_span"]["characters"] >= 200
    assert verify_export(tmp_path / "export")[0].problems == []
    path.write_bytes(path.read_bytes()[:-1] + b"\x7f")
    assert verify_export(tmp_path / "export")[0].problems == [f"{PORTRAIT_FILE}: checksum differs from stats.json"]


def test_export_takes_the_text_column_when_decompose_kept_it(decomposed: Path, tmp_path: Path) -> None:
    stats = export_buckets(decomposed / "pieces_with_text", tmp_path / "export", portrait_fpr=1e-3)
    assert stats["portrait"]["text_from"] == "text column" and stats["portrait"]["texts"] == 60
    decoded = export_buckets(decomposed / "pieces", tmp_path / "decoded", portrait_fpr=1e-3)["portrait"]
    assert decoded["characters"] <= stats["portrait"]["characters"]  # remainders are not in the buckets


def test_export_command_takes_portrait_options(decomposed: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(export_command, ["--input", str(decomposed / "pieces"), "--output", str(tmp_path / "out"),
                                                 "--portrait"])
    assert result.exit_code == 0, result.output
    assert f"portrait {PORTRAIT_FILE}:" in result.output
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["portrait"]["target_fpr"] == 1e-3
    rated = CliRunner().invoke(export_command, ["--input", str(decomposed / "pieces"), "--output", str(tmp_path / "rated"),
                                                "--portrait-fpr", "0.01"])
    assert rated.exit_code == 0 and json.loads((tmp_path / "rated" / "stats.json").read_text())["portrait"]["hashes"] == 7
    plain = CliRunner().invoke(export_command, ["--input", str(decomposed / "pieces"), "--output", str(tmp_path / "plain")])
    assert plain.exit_code == 0 and "portrait" not in json.loads((tmp_path / "plain" / "stats.json").read_text())


# ---------------------------------------------------------------- decontamination against a sketch


def benchmark_items(count: int, seed: int = 3) -> list[str]:
    """Questions of shuffled English words: in no page unless planted there (pydoc repeats its own paragraphs)."""
    rng = random.Random(seed)
    words = " ".join(PARAGRAPHS).split()
    return [" ".join(rng.choices(words, k=70)) + "?" for _ in range(count)]


BENCHMARK = benchmark_items(20)


def write_pages(directory: Path) -> int:
    """Two JSONL files of pages; a few quote a benchmark item somewhere inside. Returns how many."""
    directory.mkdir()
    planted = 0
    for part in range(2):
        rows = []
        for index in range(30):
            text = PARAGRAPHS[part * 100 + index * 3] + "\n\n" + PARAGRAPHS[part * 100 + index * 3 + 1]
            if index % 10 == 4:
                item = BENCHMARK[(index + part) % len(BENCHMARK)]
                text = f"{text}\n\nAs the manual puts it: {item[7:]}\n\n{PARAGRAPHS[300 + index]}"
                planted += 1
            rows.append({"id": f"page-{part}-{index}", "text": text})
        (directory / f"pages{part}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return planted


def run_decontaminate(tmp_path: Path, name: str, params: str) -> Path:
    graph = tmp_path / f"{name}.yaml"
    graph.write_text("stages:\n"
                     f"  read:\n    stage: read_text\n    params: {{paths: ['{tmp_path / 'pages'}/*.jsonl']}}\n"
                     f"  decontaminate:\n    stage: decontaminate\n    input: read\n    params: {params}\n")
    run_graph(load_graph(graph, tmp_path / name), make_executor("inprocess"))
    return tmp_path / name / "decontaminate"


def test_decontaminate_against_a_benchmark_sketch_drops_the_planted_pages_and_keeps_the_ledger(tmp_path: Path) -> None:
    planted = write_pages(tmp_path / "pages")
    sketch_of(BENCHMARK, target_fpr=1e-4).write(tmp_path / "bench.bloom")
    dataset = Dataset(run_decontaminate(tmp_path, "drop", f"{{sketches: ['{tmp_path / 'bench.bloom'}']}}"))
    manifest = dataset.manifest()
    assert manifest.rows_in == 60 and manifest.rejected == {"contaminated": planted}
    for shard in manifest.shards:
        ledger = pl.read_parquet(dataset.reject_path(shard.name))
        assert shard.rows_in == shard.rows + shard.rows_rejected == 30 and ledger.height == shard.rows_rejected
        assert all(detail.startswith("benchmark=bench ngrams=") and " span=" in detail for detail in ledger["detail"])
    assert set(pl.read_parquet(dataset.path / "_rejects" / "*.parquet")["id"]) == {
        f"page-{part}-{index}" for part in range(2) for index in range(30) if index % 10 == 4}
    report = decontamination_report(dataset.path)
    assert report["contaminated"] == planted and report["benchmarks"]["bench"]["documents"] == planted
    assert report["sketch_min_span"] == 2 * WIDTH
    assert report["benchmarks"]["bench"]["sketch"]["hashes"] == read_portrait(tmp_path / "bench.bloom").hashes

    flagged = run_decontaminate(tmp_path, "flag", f"{{mode: flag, sketches: ['{tmp_path / 'bench.bloom'}']}}")
    frame = pl.read_parquet(flagged / "*.parquet")
    assert frame.height == 60 and frame[BENCHMARK_COLUMN].drop_nulls().to_list() == ["bench"] * planted
    assert frame.filter(pl.col(BENCHMARK_COLUMN).is_not_null())[NGRAMS_COLUMN].min() > 0


def test_a_benchmark_is_checked_against_a_training_sketch_by_share(tmp_path: Path) -> None:
    """The other direction: the benchmark's items are the documents, the sketch is of the training data."""
    write_pages(tmp_path / "pages")
    training = [json.loads(line)["text"] for part in (0, 1) for line in
                (tmp_path / "pages" / f"pages{part}.jsonl").read_text().splitlines()]
    sketch_of(training, target_fpr=1e-4).write(tmp_path / "training.bloom")
    (tmp_path / "pages").rename(tmp_path / "training-pages")
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "items.jsonl").write_text("".join(json.dumps({"id": f"item-{index}", "text": item}) + "\n"
                                                            for index, item in enumerate(BENCHMARK)))
    sketch = json.dumps({"name": "training", "path": str(tmp_path / "training.bloom")})
    report = decontamination_report(run_decontaminate(
        tmp_path, "check", f"{{mode: flag, sketch_min_span: 10000, sketch_min_share: 0.5, sketches: ['{sketch}']}}"))
    assert report["contaminated"] == 4 and report["sketch_min_share"] == 0.5


def test_decontaminate_config_needs_benchmarks_or_sketches_with_unique_names() -> None:
    with pytest.raises(ValueError, match="give benchmarks or sketches"):
        DecontaminateConfig()
    with pytest.raises(ValueError, match="unique together"):
        DecontaminateConfig(benchmarks=[{"name": "gsm8k", "paths": ["g.jsonl"]}], sketches=["gsm8k.bloom"])
    config = DecontaminateConfig.model_validate({"sketches": ['{"name": "a", "path": "x.bloom"}', "dir/my sketch.bloom"]})
    assert [(sketch.name, sketch.path) for sketch in config.sketches] == [("a", "x.bloom"), ("my_sketch", "dir/my sketch.bloom")]
