"""The decontaminate stage: benchmark n-grams found in documents, dropped or flagged, and reported back."""

from __future__ import annotations

import gzip
import json
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gristmill.pipeline.cli.main import stage_command
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.stages.words import whitespace_words
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.stages.dedup.decontaminate import (  # importing registers the stage; stages/__init__.py does not import it yet
    BENCHMARK_COLUMN,
    INDEX_DIR,
    NGRAMS_COLUMN,
    Decontaminate,
    DecontaminateConfig,
    build_index,
    decontamination_report,
)
from tests.conftest import WORDS, data_files

# GSM8K-style items (question, worked answer with calculator annotations, "#### result").
MUFFINS = ("A bakery sells muffins for $3 each and cookies for $2 each. On Monday it sold 45 muffins and twice as many "
           "cookies. How much money did the bakery make on Monday?")  # 32 words, so 20 13-grams
PAGES = ("Liam reads 12 pages of his book every weekday and 20 pages on each day of the weekend. How many pages does "
         "he read in two weeks?")  # 27 words, so 15 13-grams
GSM8K_ITEMS = [
    {"question": MUFFINS, "answer": "The bakery sold 45 * 2 = <<45*2=90>>90 cookies.\nMuffins made 45 * 3 = <<45*3=135>>135 "
                                    "dollars and cookies 90 * 2 = <<90*2=180>>180 dollars.\nIn total 135 + 180 = "
                                    "<<135+180=315>>315 dollars.\n#### 315"},
    {"question": PAGES, "answer": "Each week he reads 5 * 12 + 2 * 20 = <<5*12+2*20=100>>100 pages.\nIn two weeks he reads "
                                  "2 * 100 = <<2*100=200>>200 pages.\n#### 200"},
]
RED_PLANET = "Which planet is known as the Red Planet?"  # 8 words: shorter than 13, matched whole
TRIVIA_ITEMS = [
    {"question": RED_PLANET, "answer": "Mars"},
    {"question": "What is the capital of France?", "answer": "Paris"},  # 6 words: too short to check
    {"question": "Which element has the chemical symbol O and makes up about twenty one percent of the air we breathe?",
     "answer": "Oxygen"},
]
FILLER = "Our village newsletter covers the harvest fair, the school concert and a new cycle path along the river."


def write_jsonl(path: Path, rows: list[dict], broken_lines: int = 0) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
        handle.writelines("{truncated\n" for _ in range(broken_lines))
    return path


@pytest.fixture
def benchmark_files(tmp_path: Path) -> dict[str, Path]:
    gsm8k = write_jsonl(tmp_path / "gsm8k_test.jsonl", GSM8K_ITEMS, broken_lines=1)
    trivia = tmp_path / "trivia.parquet"
    pl.DataFrame(TRIVIA_ITEMS).write_parquet(trivia)
    return {"gsm8k": gsm8k, "trivia": trivia}


def bound_stage(tmp_path: Path, benchmarks: list[dict], **options) -> Decontaminate:
    """A stage bound to a freshly built index, as the runner would hand it to a worker."""
    config = DecontaminateConfig(benchmarks=benchmarks, **options)
    index_dir = tmp_path / f"index-{len(list(tmp_path.glob('index-*')))}"
    build_index(config, index_dir)
    stage = Decontaminate(config)
    stage.bind(str(index_dir), "part-00000")
    return stage


def both_benchmarks(files: dict[str, Path]) -> list[dict]:
    return [
        {"name": "gsm8k", "paths": [str(files["gsm8k"])], "fields": ["question", "answer"]},
        {"name": "trivia", "paths": [str(files["trivia"])], "fields": ["question"]},
    ]


def batch_of(texts: list[str | None]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([{"id": f"d{i}", "text": text} for i, text in enumerate(texts)], schema=DOCUMENT_SCHEMA)


def hits_of(stage: Decontaminate, texts: list[str | None]) -> list[list[int]]:
    return stage.index.count_hits(batch_of(texts).column("text")).tolist()


# ---------------------------------------------------------------- hand-checked cases


def test_a_question_quoted_inside_a_page_is_found_with_every_13_gram(tmp_path: Path, benchmark_files) -> None:
    stage = bound_stage(tmp_path, both_benchmarks(benchmark_files))
    page = f"{FILLER} Here is this week's puzzle for the children: {MUFFINS} Answers next week. {FILLER}"
    assert hits_of(stage, [page]) == [[20], [0]]
    result = stage.process(batch_of([page, FILLER]))
    assert result.kept.column("text").to_pylist() == [FILLER]
    assert result.rejected.to_pylist() == [
        {"id": "d0", "stage": None, "reason": "contaminated", "detail": "benchmark=gsm8k ngrams=20"}
    ]


def test_twelve_shared_words_are_not_enough_and_thirteen_are(tmp_path: Path, benchmark_files) -> None:
    stage = bound_stage(tmp_path, both_benchmarks(benchmark_files))
    twelve = "Liam reads 12 pages of his book every weekday and 20 pages before he goes to sleep."
    thirteen = "Liam reads 12 pages of his book every weekday and 20 pages on most nights."
    assert hits_of(stage, [twelve, thirteen]) == [[0, 1], [0, 0]]


def test_case_punctuation_and_spacing_do_not_hide_a_copy(tmp_path: Path, benchmark_files) -> None:
    stage = bound_stage(tmp_path, both_benchmarks(benchmark_files))
    reformatted = ("LIAM reads 12 pages of his book — every weekday; and 20 pages\non each day of the weekend!!\n\n"
                   "“How many pages does he read in two weeks?”")
    original = hits_of(stage, [PAGES])[0][0]
    assert original == 27 - 12
    assert hits_of(stage, [reformatted])[0][0] == original


def test_ngrams_never_span_two_documents_of_a_batch(tmp_path: Path, benchmark_files) -> None:
    stage = bound_stage(tmp_path, both_benchmarks(benchmark_files))
    first_twelve_words = "Liam reads 12 pages of his book every weekday and 20 pages"
    last_fifteen_words = "on each day of the weekend. How many pages does he read in two weeks?"
    assert hits_of(stage, [first_twelve_words, last_fifteen_words]) == [[0, 3], [0, 0]]


def test_short_items_match_whole_and_shorter_ones_are_skipped(tmp_path: Path, benchmark_files) -> None:
    stage = bound_stage(tmp_path, both_benchmarks(benchmark_files))
    texts = [
        "Quiz night! Which planet is known as the red planet? Write your answer on the card.",
        "Which planet is known as the largest planet?",
        "What is the capital of France? Everyone knows that one.",
    ]
    assert hits_of(stage, texts) == [[0, 0, 0], [1, 0, 0]]
    manifest = json.loads((tmp_path / "index-0" / "index.json").read_text())
    trivia = manifest["benchmarks"][1]
    assert (trivia["items"], trivia["items_too_short"], trivia["items_matched_whole"]) == (3, 1, 1)
    assert trivia["ngrams"] == 1 + (19 - 12)
    assert manifest["lengths"] == [8, 13]


def test_hits_count_distinct_ngrams_so_repeating_a_sentence_adds_nothing(tmp_path: Path, benchmark_files) -> None:
    stage = bound_stage(tmp_path, both_benchmarks(benchmark_files))
    assert hits_of(stage, [f"{MUFFINS} {FILLER} {MUFFINS}"])[0][0] == 20


def test_missing_empty_and_punctuation_only_texts_are_kept_clean(tmp_path: Path, benchmark_files) -> None:
    stage = bound_stage(tmp_path, both_benchmarks(benchmark_files))
    texts = [None, "", "   \n", "!!! ... ???", "word"]
    result = stage.process(batch_of(texts))
    assert result.kept.num_rows == len(texts) and result.rejected.num_rows == 0


def strings_followed_by(texts: list[str], trailing: bytes) -> pa.Array:
    """A string array whose data buffer goes on past its last text, as a buffer's unused capacity does."""
    data = "".join(texts).encode()
    offsets = np.cumsum([0, *(len(text.encode()) for text in texts)], dtype=np.int32)
    array = pa.Array.from_buffers(pa.string(), len(texts), [None, pa.py_buffer(offsets), pa.py_buffer(data + trailing)])
    array.validate(full=True)
    return array


def test_a_text_ending_in_whitespace_splits_the_same_whatever_bytes_follow_it_in_memory() -> None:
    # Arrow's utf8_split_whitespace alone splits "x² x² " into ["x²", "x² "] here: it reads past the text's end.
    endings = ["x² x² ", "river mill x² x²\u2003", "which planet is known as the red planet\n", "grain\xa0", "  "]
    for ending in endings:
        texts = whitespace_words(strings_followed_by(["Our village newsletter", ending], b"\xff")).to_pylist()
        assert [[word for word in words if word] for words in texts] == [["Our", "village", "newsletter"], ending.split()]


# ---------------------------------------------------------------- modes, threshold, several benchmarks


def test_flag_mode_keeps_everything_and_flags_exactly_what_drop_mode_drops(tmp_path: Path, benchmark_files) -> None:
    texts = [MUFFINS, FILLER, f"{FILLER} {RED_PLANET}", f"{MUFFINS} {RED_PLANET}", None]
    dropped = bound_stage(tmp_path, both_benchmarks(benchmark_files)).process(batch_of(texts))
    flag_stage = bound_stage(tmp_path, both_benchmarks(benchmark_files), mode="flag")
    flagged = flag_stage.process(batch_of(texts))
    assert flagged.rejected.num_rows == 0
    assert flagged.kept.schema.equals(flag_stage.output_schema(DOCUMENT_SCHEMA))
    assert flagged.kept.column(BENCHMARK_COLUMN).to_pylist() == ["gsm8k", None, "trivia", "gsm8k", None]
    assert flagged.kept.column(NGRAMS_COLUMN).to_pylist() == [20, 0, 1, 20, 0]
    assert flagged.kept.schema.field(NGRAMS_COLUMN).type == pa.int32()
    flagged_ids = {row["id"] for row in flagged.kept.to_pylist() if row[BENCHMARK_COLUMN]}
    assert flagged_ids == set(dropped.rejected.column("id").to_pylist()) == {"d0", "d2", "d3"}
    expected_stats = {"contaminated.gsm8k": 2, "contaminated.trivia": 1, "ngram_hits.gsm8k": 40, "ngram_hits.trivia": 1}
    assert flagged.stats == dropped.stats == expected_stats


def test_flag_mode_replaces_columns_left_by_an_earlier_flag_run(tmp_path: Path, benchmark_files) -> None:
    stage = bound_stage(tmp_path, both_benchmarks(benchmark_files), mode="flag")
    once = stage.process(batch_of([MUFFINS, FILLER])).kept
    twice = stage.process(once.to_batches()[0]).kept
    assert twice.equals(once)


def test_below_the_threshold_counts_are_kept_in_flag_mode_but_nothing_is_flagged(tmp_path: Path, benchmark_files) -> None:
    one_ngram = "Liam reads 12 pages of his book every weekday and 20 pages on most nights."
    texts = [one_ngram, MUFFINS]
    result = bound_stage(tmp_path, both_benchmarks(benchmark_files), min_hits=5).process(batch_of(texts))
    assert result.kept.column("text").to_pylist() == [one_ngram]
    assert result.rejected.column("detail").to_pylist() == ["benchmark=gsm8k ngrams=20"]
    flagged = bound_stage(tmp_path, both_benchmarks(benchmark_files), min_hits=5, mode="flag").process(batch_of(texts))
    assert flagged.kept.column(BENCHMARK_COLUMN).to_pylist() == [None, "gsm8k"]
    assert flagged.kept.column(NGRAMS_COLUMN).to_pylist() == [1, 20]


def test_the_benchmark_with_most_hits_is_named_and_ties_go_to_the_first_listed(tmp_path: Path, benchmark_files) -> None:
    stage = bound_stage(tmp_path, both_benchmarks(benchmark_files))
    one_each = f"Liam reads 12 pages of his book every weekday and 20 pages on most nights. {RED_PLANET}"
    oxygen = "Which element has the chemical symbol O and makes up about twenty one percent of the air we breathe?"
    result = stage.process(batch_of([one_each, f"{oxygen} {RED_PLANET} {one_each}"]))
    assert result.rejected.column("detail").to_pylist() == ["benchmark=gsm8k ngrams=1", "benchmark=trivia ngrams=8"]


def test_a_rebuilt_index_is_reloaded_by_a_worker_that_loaded_the_old_one(tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    config = DecontaminateConfig(benchmarks=[{"name": "gsm8k", "paths": [str(items)], "fields": ["question"]}])
    stage = Decontaminate(config)
    for question, expected in ((MUFFINS, [[20, 0]]), (PAGES, [[0, 15]])):
        write_jsonl(items, [{"question": question}])
        build_index(config, tmp_path / "index")
        stage.bind(str(tmp_path / "index"), "part-00000")
        assert hits_of(stage, [MUFFINS, PAGES]) == expected


def test_jsonl_gzip_and_parquet_benchmarks_give_the_same_index(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "items.jsonl.gz", GSM8K_ITEMS)
    pl.DataFrame(GSM8K_ITEMS).write_parquet(tmp_path / "items.parquet")
    arrays = []
    for name in ("items.jsonl.gz", "items.parquet"):
        benchmark = {"name": "gsm8k", "paths": [str(tmp_path / name)], "fields": ["question", "answer"]}
        config = DecontaminateConfig(benchmarks=[benchmark])
        build_index(config, tmp_path / name.replace(".", "_"))
        arrays.append(np.load(tmp_path / name.replace(".", "_") / "000.npy"))
    assert np.array_equal(arrays[0], arrays[1])
    assert len(arrays[0]) > 20 + 15 and np.all(arrays[0][1:] > arrays[0][:-1])


def test_unusable_benchmark_records_are_counted_and_bad_configs_name_the_problem(tmp_path: Path, benchmark_files) -> None:
    manifest = build_index(DecontaminateConfig(benchmarks=both_benchmarks(benchmark_files)), tmp_path / "index")
    assert manifest["benchmarks"][0]["items_unusable"] == 1
    with pytest.raises(ValueError, match="no field 'prompt'"):
        build_index(DecontaminateConfig(benchmarks=[{"name": "t", "paths": [str(benchmark_files["trivia"])],
                                                      "fields": ["prompt"]}]), tmp_path / "bad")
    with pytest.raises(ValueError, match="no item has any of the fields"):
        build_index(DecontaminateConfig(benchmarks=[{"name": "g", "paths": [str(benchmark_files["gsm8k"])],
                                                      "fields": ["prompt"]}]), tmp_path / "bad")
    with pytest.raises(ValueError, match="no item has 8 words or more"):
        build_index(DecontaminateConfig(benchmarks=[{"name": "t", "paths": [str(benchmark_files["trivia"])],
                                                      "fields": ["answer"]}]), tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        build_index(DecontaminateConfig(benchmarks=[{"name": "g", "paths": [str(tmp_path / "nothing-here*.jsonl")]}]),
                    tmp_path / "bad")


def test_config_is_validated_and_accepts_json_benchmarks_from_the_command_line() -> None:
    config = DecontaminateConfig.model_validate(
        {"benchmarks": ['{"name": "gsm8k", "paths": ["g.jsonl"], "fields": ["question", "answer"]}']}
    )
    assert config.benchmarks[0].fields == ["question", "answer"] and config.ngram_words == 13
    same = {"name": "x", "paths": ["a.jsonl"]}
    with pytest.raises(ValidationError, match="must be unique"):
        DecontaminateConfig(benchmarks=[same, same])
    with pytest.raises(ValidationError, match="min_item_words must be at most ngram_words"):
        DecontaminateConfig(benchmarks=[same], ngram_words=5)
    with pytest.raises(ValidationError, match="pattern"):
        DecontaminateConfig(benchmarks=[{"name": "has space", "paths": ["a.jsonl"]}])


# ---------------------------------------------------------------- agreement with a plain-Python reference


def reference_words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if not unicodedata.category(c).startswith(("P", "S"))).split()


def reference_hits(text: str, items: list[str], ngram_words: int, min_item_words: int) -> int:
    grams = set()
    for item in map(reference_words, items):
        if len(item) >= ngram_words:
            grams.update(tuple(item[i : i + ngram_words]) for i in range(len(item) - ngram_words + 1))
        elif len(item) >= min_item_words:
            grams.add(tuple(item))
    words = reference_words(text)
    document = {tuple(words[i : i + len(gram)]) for gram in grams for i in range(len(words) - len(gram) + 1)}
    return len(document & grams)


VOCABULARY = ["river", "Mill", "GRAIN", "flour", "café", "l'eau", "x²", "42", "3.5", "£5", "5", "+5"]
SEPARATORS = [" ", "  ", "\n", ", ", ". ", " — ", "\u00a0", "? ", "\t"]
texts_from_vocabulary = st.lists(st.tuples(st.sampled_from(VOCABULARY), st.sampled_from(SEPARATORS)), max_size=25).map(
    lambda pairs: "".join(word + separator for word, separator in pairs)
)


@settings(max_examples=60, deadline=None)
@given(items=st.lists(texts_from_vocabulary, min_size=1, max_size=6), documents=st.lists(texts_from_vocabulary, max_size=12))
@example(items=["x² x² "], documents=["river river river river river Mill Mill Mill Mill 42 42 x² x² "])  # see gristmill.stages.words
def test_hits_agree_with_a_plain_python_reference(tmp_path_factory, items: list[str], documents: list[str]) -> None:
    directory = tmp_path_factory.mktemp("reference")
    write_jsonl(directory / "items.jsonl", [{"text": item} for item in items] + [{"text": "river mill grain flour"}])
    config = DecontaminateConfig(benchmarks=[{"name": "b", "paths": [str(directory / "items.jsonl")]}],
                                 ngram_words=4, min_item_words=2)
    build_index(config, directory / "index")
    stage = Decontaminate(config)
    stage.bind(str(directory / "index"), "part-00000")
    expected = [reference_hits(document, [*items, "river mill grain flour"], 4, 2) for document in documents]
    assert stage.index.count_hits(pa.array(documents, pa.string()))[0].tolist() == expected


# ---------------------------------------------------------------- through the graph


def write_documents(directory: Path) -> int:
    """Two JSONL files of village-news pages; a few quote benchmark items. Returns the planted count."""
    directory.mkdir()
    planted = [MUFFINS, PAGES.upper(), f"Quiz: {RED_PLANET}", MUFFINS + " " + RED_PLANET]
    for part in range(2):
        rows = []
        for index in range(40):
            words = " ".join(WORDS[(index * 7 + offset) % len(WORDS)] for offset in range(60))
            text = f"{FILLER} {words}."
            if index % 10 == 3:
                text += " " + planted[(index // 10 + part) % len(planted)]
            rows.append({"id": f"page-{part}-{index}", "text": text, "url": f"https://news{part}.example/{index}"})
        write_jsonl(directory / f"pages{part}.jsonl", rows)
    return 2 * 4


def write_decontamination_graph(path: Path, documents: Path, files: dict[str, Path], mode: str) -> Path:
    path.write_text(
        "plugins: [gristmill.stages.dedup.decontaminate]\n"
        "stages:\n"
        f"  read:\n    stage: read_text\n    params: {{paths: ['{documents}/*.jsonl']}}\n"
        "  decontaminate:\n    stage: decontaminate\n    input: read\n    params:\n"
        f"      mode: {mode}\n"
        "      benchmarks:\n"
        f"        - {{name: gsm8k, paths: ['{files['gsm8k']}'], fields: [question, answer]}}\n"
        f"        - {{name: trivia, paths: ['{files['trivia']}'], fields: [question]}}\n"
    )
    return path


@pytest.mark.slow
def test_graph_runs_give_identical_bytes_on_inprocess_and_dask_and_report_per_benchmark(tmp_path: Path, benchmark_files) -> None:
    planted = write_documents(tmp_path / "documents")
    graph_path = write_decontamination_graph(tmp_path / "g.yaml", tmp_path / "documents", benchmark_files, "drop")
    runs = {}
    for kind in ("inprocess", "dask"):
        with make_executor(kind, 2) as executor:
            run_graph(load_graph(graph_path, tmp_path / kind), executor)
        runs[kind] = data_files(tmp_path / kind)
    assert runs["inprocess"] == runs["dask"]

    dataset = Dataset(tmp_path / "inprocess" / "decontaminate")
    manifest = dataset.manifest()
    assert manifest.rows_in == 80 and manifest.rejected == {"contaminated": planted}
    for shard in manifest.shards:
        ledger = pl.read_parquet(dataset.reject_path(shard.name))
        assert shard.rows_in == shard.rows + shard.rows_rejected == 40
        assert ledger.height == shard.rows_rejected and set(ledger["stage"]) == {"decontaminate"}
    assert (dataset.path / "_work" / INDEX_DIR / "index.json").exists()

    report = decontamination_report(dataset.path)
    assert (report["documents"], report["contaminated"]) == (80, planted)
    # Each file plants MUFFINS (20 13-grams), PAGES (27 words, 15), RED_PLANET (1) and MUFFINS + RED_PLANET once.
    assert report["benchmarks"]["gsm8k"] | {"index": None} == {"documents": 6, "ngram_hits": 4 * 20 + 2 * 15, "index": None}
    assert report["benchmarks"]["trivia"] | {"index": None} == {"documents": 2, "ngram_hits": 2, "index": None}
    assert report["benchmarks"]["trivia"]["index"] == {
        "items": 3, "items_unusable": 0, "items_too_short": 1, "items_matched_whole": 1, "ngrams": 8}
    ledger = pl.read_parquet(dataset.path / "_rejects" / "*.parquet")["detail"].str.extract_groups(
        r"benchmark=(?<benchmark>\S+) ngrams=(?<ngrams>\d+)").struct.unnest()
    from_ledger = ledger.group_by("benchmark").agg(pl.len(), pl.col("ngrams").cast(pl.Int64).sum()).sort("benchmark")
    assert from_ledger.rows() == [(name, entry["documents"], entry["ngram_hits"]) for name, entry in report["benchmarks"].items()]


def test_flag_mode_through_the_graph_reports_the_same_as_drop_mode(tmp_path: Path, benchmark_files) -> None:
    write_documents(tmp_path / "documents")
    reports = {}
    for mode in ("drop", "flag"):
        graph_path = write_decontamination_graph(tmp_path / f"{mode}.yaml", tmp_path / "documents", benchmark_files, mode)
        with make_executor("inprocess") as executor:
            run_graph(load_graph(graph_path, tmp_path / mode), executor)
        reports[mode] = decontamination_report(tmp_path / mode / "decontaminate")
    assert reports["flag"] == reports["drop"] | {"mode": "flag"}
    flagged = pl.read_parquet(tmp_path / "flag" / "decontaminate" / "*.parquet")
    assert flagged.height == 80 and flagged[BENCHMARK_COLUMN].null_count() == 80 - reports["drop"]["contaminated"]
    from_columns = flagged.drop_nulls(BENCHMARK_COLUMN).group_by(BENCHMARK_COLUMN).agg(
        pl.len(), pl.col(NGRAMS_COLUMN).cast(pl.Int64).sum()).sort(BENCHMARK_COLUMN)
    assert from_columns.rows() == [(name, entry["documents"], entry["ngram_hits"])
                                   for name, entry in reports["flag"]["benchmarks"].items()]


def test_the_generated_command_line_runs_the_stage(tmp_path: Path, benchmark_files) -> None:
    write_documents(tmp_path / "documents")
    with make_executor("inprocess") as executor:
        run_graph(load_graph(write_decontamination_graph(tmp_path / "g.yaml", tmp_path / "documents", benchmark_files,
                                                         "drop"), tmp_path / "run"), executor)
    benchmark = json.dumps({"name": "gsm8k", "paths": [str(benchmark_files["gsm8k"])], "fields": ["question", "answer"]})
    result = CliRunner().invoke(stage_command(Decontaminate), [
        "--input", str(tmp_path / "run" / "read"), "--output", str(tmp_path / "cli"), "--executor", "inprocess",
        "--benchmarks", benchmark, "--min-hits", "15",
    ])
    assert result.exit_code == 0, result.output
    report = decontamination_report(tmp_path / "cli")
    assert report["min_hits"] == 15
    assert report["benchmarks"]["gsm8k"]["documents"] == 6  # each has 15 or 20 n-grams
