"""The run report: its funnel equals the ledgers and data files exactly, and every section is present and rendered."""

from __future__ import annotations

import json
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from gristmill.pipeline.cli.report import report
from gristmill.pipeline.engine.dataset import ShardRecord
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.report import check_html
from gristmill.pipeline.engine.runner import SUMMARY_NAME, run_graph
from gristmill.pipeline.engine.stage import registered_stages
from gristmill.pipeline.reports.run_report import LENGTH_EDGES, Histogram, KeyTally, collect, kept_keys
from gristmill.pipeline.tokens.export import export_buckets
from gristmill.stages.dedup.components import CLUSTER_SIZES_FILE, size_bin
from gristmill.stages.rewrite.report import EXAMPLE_CHARS
from gristmill.stages.tokens.tokenization import DEFAULT_EOS, save_tokenizer, train_byte_level_bpe
from tests.conftest import WORDS
from tests.test_rewrite import ENGLISH, GERMAN, build_tiny_llama

PARENTS = {"read": [], "long": ["read"], "dedup": ["long"], "short": ["read"], "merged": ["dedup", "short"],
           "tokens": ["merged"], "pieces": ["tokens"]}
# Exact copies made on purpose: clusters of 2 (four of them) and 3 (two of them).
COPIES = [1, 1, 1, 1, 2, 2]


def corpus_texts(rng: random.Random, count: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice([2, 3, 8, 30, 120]))) + "." for _ in range(count)]


def write_run_corpus(directory: Path) -> list[str]:
    """Two JSONL files from two sources and several domains and languages, with exact duplicates across files."""
    rng = random.Random(7)
    directory.mkdir(parents=True)
    texts = [corpus_texts(rng, 90), corpus_texts(rng, 70)]
    for cluster, copies in enumerate(COPIES):
        original = " ".join(rng.choice(WORDS) for _ in range(12)) + f" cluster {cluster}."
        texts[0].append(original)
        texts[1].extend([original] * copies)
    for part, part_texts in enumerate(texts):
        rows = [{"id": f"d{part}-{index:03d}", "text": text, "source": "web" if index % 3 else "wiki",
                 "url": f"https://site{index % 5}.example/{index}", "lang": "en" if index % 4 else "fr",
                 "lang_score": round(0.5 + (index % 50) / 100, 2)} for index, text in enumerate(part_texts)]
        (directory / f"part{part}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [text for part_texts in texts for text in part_texts]


def build_small_run(root: Path) -> Path:
    """A run with a branch, a node of two parents, exact dedup, tokens, buckets and an export; returns its directory.

    About two seconds; other report tests (the browser check) may build theirs with it.
    """
    texts = write_run_corpus(root / "corpus")
    save_tokenizer(train_byte_level_bpe(texts, vocab_size=300), root / "tokenizer", DEFAULT_EOS, {"corpus": "test"})
    graph = root / "graph.yaml"
    graph.write_text(
        "plugins: [gristmill.stages.ingest.read_text, gristmill.stages.filters.length_filter, gristmill.stages.dedup.exact_dedup, gristmill.stages.tokens.tokenize, gristmill.stages.tokens.decompose]\n"
        "stages:\n"
        f"  read: {{stage: read_text, params: {{paths: ['{root}/corpus/*.jsonl']}}}}\n"
        "  long: {stage: length_filter, input: read, params: {min_words: 5}}\n"
        "  dedup: {stage: exact_dedup, input: long}\n"
        "  short: {stage: length_filter, input: read, params: {max_words: 4}}\n"
        "  merged: {stage: length_filter, input: [dedup, short], params: {min_chars: 1}}\n"
        f"  tokens: {{stage: tokenize, input: merged, params: {{tokenizer: '{root}/tokenizer'}}}}\n"
        "  pieces: {stage: decompose, input: tokens, params: {min_bucket: 3, max_bucket: 6}}\n"
    )
    run_graph(load_graph(graph, root / "run"), make_executor("inprocess"))
    export_buckets(root / "run" / "pieces", root / "run" / "shards")
    return root / "run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return build_small_run(tmp_path_factory.mktemp("report_run"))


@pytest.fixture(scope="module")
def collected(run_dir: Path) -> dict:
    return collect(run_dir)


def section_statistics(data: dict, node: str) -> dict:
    """The statistics of the one section the node's stage handed the report."""
    [statistics] = [section["statistics"] for section in data["stage_sections"] if section["node"] == node]
    return statistics


def parquet_rows(paths) -> int:
    return sum(pq.read_metadata(path).num_rows for path in paths)


def test_funnel_numbers_equal_the_ledgers_and_data_files(run_dir: Path, collected: dict) -> None:
    funnel = {row["node"]: row for row in collected["funnel"]}
    summary_order = [stage["node"] for stage in json.loads((run_dir / "_summary.json").read_text())["stages"]]
    assert [row["node"] for row in collected["funnel"]] == summary_order
    assert set(funnel) == set(PARENTS)
    assert collected["problems"] == []
    assert [(section["node"], section["title"]) for section in collected["stage_sections"]] == [
        ("dedup", "Duplicate clusters: dedup"), ("tokens", "Tokens: tokens"), ("pieces", "Buckets: pieces")]
    for node, parents in PARENTS.items():
        row = funnel[node]
        ledgers = sorted((run_dir / node / "_rejects").glob("*.parquet"))
        reasons = Counter(reason for path in ledgers for reason in pq.read_table(path).column("reason").to_pylist())
        outputs = sorted((run_dir / node).glob("part-*.parquet"))
        assert row["rejected"] == sum(reasons.values()) == parquet_rows(ledgers), node
        assert row["reasons"] == dict(reasons), node
        assert row["rows_out"] == parquet_rows(outputs), node
        if node == "pieces":  # rows are pieces of documents: documents out are distinct document ids
            ids = pa.concat_arrays([pq.read_table(path).column("document_id").combine_chunks() for path in outputs])
            assert row["documents_out"] == pc.count_distinct(ids).as_py() < row["rows_out"]
        else:
            assert row["documents_out"] == row["rows_out"]
        if parents:  # a map stage reads every row its parents wrote, from several parents for `merged`
            read = parquet_rows(path for parent in parents for path in (run_dir / parent).glob("part-*.parquet"))
            assert row["documents_in"] == read, node
        assert row["documents_in"] == row["documents_out"] + row["rejected"]
    assert funnel["dedup"]["reasons"] == {"exact_duplicate": sum(COPIES)}
    assert funnel["long"]["reasons"] and funnel["short"]["reasons"]

    tokens = sum(pc.sum(pq.read_table(path).column("num_tokens")).as_py()
                 for path in (run_dir / "tokens").glob("part-*.parquet"))
    piece_tokens = sum(pc.sum(pq.read_table(path).column("num_tokens")).as_py()
                       for path in (run_dir / "pieces").glob("part-*.parquet"))
    assert funnel["tokens"]["tokens_in"] is None and funnel["tokens"]["tokens_out"] == tokens
    assert funnel["pieces"]["tokens_in"] == tokens and funnel["pieces"]["tokens_out"] == piece_tokens < tokens
    assert funnel["merged"]["text_bytes_in"] == funnel["dedup"]["text_bytes_out"] + funnel["short"]["text_bytes_out"]
    assert all(row["wall_seconds"] and row["documents_per_second"] for row in collected["funnel"])
    assert json.loads(json.dumps(collected)) == collected  # plain JSON values, no numpy scalars


def test_distributions_and_sources_match_the_data(run_dir: Path, collected: dict) -> None:
    assert collected["profiled"]["input"] == "read" and collected["profiled"]["outputs"] == ["tokens"]
    read = pa.concat_tables(pq.read_table(path) for path in sorted((run_dir / "read").glob("part-*.parquet")))
    tokens = pa.concat_tables(pq.read_table(path) for path in sorted((run_dir / "tokens").glob("part-*.parquet")))
    lengths = collected["lengths"]
    assert lengths["read"]["values"] + lengths["read"]["empty"] == read.num_rows
    assert lengths["read"]["max"] == pc.max(pc.utf8_length(read.column("text"))).as_py()
    assert lengths["tokens"]["mean"] == pytest.approx(pc.mean(pc.utf8_length(tokens.column("text"))).as_py())
    for column in ("source", "domain", "lang"):
        for name, table in (("read", read), ("tokens", tokens)):
            expected = Counter(table.column(column).to_pylist())
            assert collected["keys"][column][name]["documents"] == dict(expected), (column, name)
    web = pc.equal(tokens.column("source"), "web")
    assert collected["keys"]["source"]["tokens"]["tokens"]["web"] == pc.sum(
        pc.filter(tokens.column("num_tokens"), web)).as_py()
    assert collected["keys"]["source"]["tokens"]["text_bytes"]["web"] == pc.sum(
        pc.binary_length(pc.filter(tokens.column("text"), web))).as_py()
    merged = pa.concat_tables(pq.read_table(path) for path in (run_dir / "merged").glob("part-*.parquet"))
    assert collected["source_funnel"]["merged"] == Counter(merged.column("source").to_pylist())
    assert list(collected["source_funnel"]) == [row["node"] for row in collected["funnel"] if row["node"] != "pieces"]
    scores = collected["scores"]["lang_score"]
    assert scores["read"]["mean"] == pytest.approx(pc.mean(read.column("lang_score")).as_py())
    assert 0.5 <= scores["read"]["p50"] <= 1.0 and sum(scores["read"]["counts"]) == read.num_rows

    assert section_statistics(collected, "dedup")["sizes"] == {"2": COPIES.count(1), "3": COPIES.count(2)}
    pieces = pa.concat_tables(pq.read_table(path) for path in (run_dir / "pieces").glob("part-*.parquet"))
    per_bucket = pieces.group_by("bucket").aggregate([("num_tokens", "sum")]).to_pydict()
    expected = {str(bucket): tokens for bucket, tokens in zip(per_bucket["bucket"], per_bucket["num_tokens_sum"])}
    buckets = section_statistics(collected, "pieces")
    assert {bucket: tally["tokens"] for bucket, tally in buckets["buckets"].items()} == expected
    sources = pieces.group_by("source").aggregate([("num_tokens", "sum")]).to_pydict()
    assert buckets["tokens_per_source"] == dict(zip(sources["source"], sources["num_tokens_sum"]))
    # Every token of the tokenized documents is in a bucket or counted as dropped, by the decompose stage's own hook.
    tokenized = section_statistics(collected, "tokens")
    assert tokenized["tokens"] == tokens.column("num_tokens").to_numpy().sum() and tokenized["tokenizer"]["vocab_size"]
    assert tokenized["tokens"] == buckets["tokens"] + sum(buckets["dropped_tokens"].values())
    assert buckets["dropped_tokens"]["short_documents"] > 0 and buckets["dropped_tokens"]["remainders"] > 0
    export = collected["exports"]["shards"]
    assert {bucket: tally["tokens"] for bucket, tally in export["buckets"].items()} == expected


def test_report_command_writes_every_section_with_real_plots(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(report, ["--input", str(run_dir), "--output", str(tmp_path / "report"), "--top", "3"])
    assert result.exit_code == 0, result.output
    assert f"report: {tmp_path / 'report' / 'report.html'}" in result.output
    checked = check_html(tmp_path / "report" / "report.html")
    assert checked["headings"][1:] == ["Funnel", "Distributions", "Sources", "Timings", "Duplicate clusters: dedup",
                                       "Tokens: tokens", "Buckets: pieces"]
    # funnel, lengths, languages, lang_score, export buckets, source funnel, domains, timings; from the stages'
    # own sections: cluster sizes and dataset buckets
    assert len(checked["images"]) == 10
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| dedup | exact_duplicate | 8 |" in markdown
    assert "| 3 | 2 | 6 |" in markdown  # clusters of three: two of them, six documents
    assert "Checks passed" in markdown and "Export shards:" in markdown
    assert "top 3 of 5" in markdown  # domains, limited by --top
    figures = sorted((tmp_path / "report" / "figures").glob("*.png"))
    assert len(figures) == 10 and f"figures/{figures[0].name}" in markdown
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [row["documents_out"] for row in saved["funnel"]] == [row["documents_out"] for row in collect(run_dir)["funnel"]]


def test_a_tampered_ledger_is_reported(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ledger = copy / "dedup" / "_rejects" / "part-00001.parquet"
    table = pq.read_table(ledger)
    assert table.num_rows > 0
    pq.write_table(table.slice(1), ledger)
    result = CliRunner().invoke(report, ["--input", str(copy), "--output", str(tmp_path / "report")])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith(f"error: {ledger}: ")
    assert not (tmp_path / "report").exists()
    for path in (copy / "dedup" / "_shards").glob("*.json"):  # older datasets record no ledger checksum:
        record = ShardRecord.model_validate_json(path.read_text())  # their ledgers are counted instead
        path.write_text(record.model_dump_json(indent=2, exclude={"ledger_bytes", "ledger_checksum"}))
    (copy / "dedup" / "_manifest.json").unlink()
    problems = collect(copy / "dedup")["problems"]
    assert len(problems) == 1 and problems[0].startswith("dedup: reject ledger")


def test_one_dataset_partial_or_without_dedup_work_files(run_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "dedup"
    shutil.copytree(run_dir / "dedup", dataset)
    shutil.rmtree(dataset / "_work")
    (dataset / "_manifest.json").unlink()
    (dataset / "_failures").mkdir()
    (dataset / "_failures" / "part-00002.txt").write_text("source: x\nValueError: boom")
    data = collect(dataset)
    assert data["problems"] == ["dedup: failed shards part-00002 (see _failures/)"]
    assert data["kind"] == "dataset" and len(data["funnel"]) == 1
    assert data["funnel"][0]["status"] == "partial (2 shards done)"
    whole_run = {row["node"]: row for row in collect(run_dir)["funnel"]}
    assert data["funnel"][0]["documents_in"] == whole_run["dedup"]["documents_in"]
    # Rebuilt from the ledger (each duplicate's detail names its survivor), the same clusters as the work files say.
    clusters = section_statistics(data, "dedup")
    assert clusters["from"] == "reject ledger" and clusters["sizes"] == {"2": COPIES.count(1), "3": COPIES.count(2)}
    assert data["profiled"] == {"input": "dedup", "outputs": ["dedup"], "score_origins": {"lang_score": "dedup"}}


def test_rewrite_and_tokenizer_comparison_sections(tmp_path: Path) -> None:
    """The rewrite section from the real stage's output: a tiny random Llama on CPU, its real statuses and reasons."""
    model = build_tiny_llama(tmp_path / "tiny-llama")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": f"r{index}", "text": text}) + "\n"
                                                 for index, text in enumerate(ENGLISH * 2 + [GERMAN])))
    graph = tmp_path / "graph.yaml"
    graph.write_text(
        "stages:\n"
        f"  read: {{stage: read_text, params: {{paths: ['{tmp_path}/docs.jsonl']}}}}\n"
        f"  rewritten: {{stage: rewrite, input: read, params: {{model: '{model}', max_new_tokens: 8, chunk_tokens: 24, "
        "checks: [refusal], max_documents: 3}}\n")
    run = tmp_path / "run"
    run_graph(load_graph(graph, run), make_executor("inprocess"))
    (run / "tokenizer_eval").mkdir()
    (run / "tokenizer_eval" / "report.json").write_text(json.dumps({"summary": [
        {"tokenizer": "ours-4k", "bytes_per_token": 3.9, "fertility": 1.31},
        {"tokenizer": "gpt2", "bytes_per_token": 4.2, "fertility": 1.2}]}))

    data = collect(run)
    table = pa.concat_tables(pq.read_table(path) for path in sorted((run / "rewritten").glob("part-*.parquet")))
    outcomes = Counter(zip(table.column("rewrite_status").to_pylist(), table.column("rewrite_reason").to_pylist()))
    assert outcomes == {("rewritten", None): 3, ("kept_original", "not_selected"): 2}
    rewrite = section_statistics(data, "rewritten")
    assert rewrite["rewritten"] == 3 and rewrite["documents"] == table.num_rows == 5
    assert {(row["status"], row["reason"]): row["documents"] for row in rewrite["outcomes"]} == {
        ("rewritten", "(none)"): 3, ("kept_original", "not_selected"): 2}
    [engine] = rewrite["engines"]
    assert engine["model"] == str(model) and engine["prompt_id"] == table.column("rewrite_prompt_id")[0].as_py()
    assert engine["tokens_out"] == pc.sum(table.column("rewrite_tokens_out")).as_py() > 0
    assert engine["tokens_out_per_second"] == pytest.approx(
        engine["tokens_out"] / pc.sum(table.column("rewrite_seconds")).as_py(), rel=1e-3)
    assert rewrite["cost"]["gpu_seconds"] == 0 and rewrite["cost"]["tokens_out_per_second"] > 0  # on CPU
    rewritten = table.filter(pc.equal(table.column("rewrite_status"), "rewritten"))
    assert [example["id"] for example in rewrite["examples"]] == rewritten.column("id").to_pylist()
    assert rewrite["examples"][0]["before"] == " ".join(rewritten.column("original_text")[0].as_py().split())
    assert all(len(example["before"]) <= EXAMPLE_CHARS for example in rewrite["examples"])
    assert [row["tokenizer"] for row in data["tokenizer_eval"]["summary"]] == ["ours-4k", "gpt2"]

    result = CliRunner().invoke(report, ["--input", str(run), "--output", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    headings = check_html(tmp_path / "report" / "report.html")["headings"]
    assert "Rewrite: rewritten" in headings and "Tokenizer comparison" in headings
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| ours-4k | 3.9 | 1.31 |" in markdown and "tokenizer_eval/report.html" in markdown
    assert "| rewritten | (none) | 3 |" in markdown and "| kept_original | not_selected | 2 |" in markdown


def test_a_corrupt_run_summary_is_one_line_naming_it(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / SUMMARY_NAME).write_text('{"stages": [{"node": "read"')  # a run killed mid-write
    result = CliRunner().invoke(report, ["--input", str(copy), "--output", str(tmp_path / "report")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {copy / SUMMARY_NAME}: corrupt JSON "
                                                  "(Expecting ',' delimiter: line 1 column 28 (char 27))"]


def test_a_corrupt_stage_work_file_is_a_visible_warning_not_a_missing_section(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    [sizes] = (copy / "dedup" / "_work").glob(f"*/{CLUSTER_SIZES_FILE}")
    sizes.write_text(sizes.read_text()[:-5])
    result = CliRunner().invoke(report, ["--input", str(copy), "--output", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    warning = f"dedup: {sizes}: not valid JSON"
    assert any(line.startswith(f"warning: {warning}") for line in result.output.splitlines())
    assert warning in (tmp_path / "report" / "report.md").read_text()  # in the report, under Checks FAILED
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [problem for problem in saved["problems"] if problem.startswith(warning)]
    assert "dedup" not in {section["node"] for section in saved["stage_sections"]}


PLUGIN_STAGE = '''
"""A stage written outside Gristmill, with its own report section."""
import pyarrow.compute as pc
from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register
from gristmill.pipeline.engine.stage_report import StageSection, bar_chart


class ShoutConfig(StageConfig):
    pass


@register
class Shout(MapStage):
    name = "report_test_shout"
    Config = ShoutConfig

    def process(self, batch):
        return BatchResult.keep_all(batch.set_column(batch.schema.get_field_index("text"), "text",
                                                      pc.utf8_upper(batch.column("text"))))

    @classmethod
    def report_sections(cls, dataset):
        upper = sum(pc.sum(pc.utf8_is_upper(batch.column(0))).as_py() or 0 for batch in dataset.batches(["text"]))
        section = StageSection(f"Shouting: {dataset.name}", {"upper_documents": upper})
        section.text(f"{upper} documents shout.")
        return [section.figure(lambda: bar_chart(["upper"], {"documents": [upper]}, "documents"), "Shouting")]
'''


def test_a_plugin_stage_outside_the_package_gets_its_own_section(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "report_test_shout.py").write_text(PLUGIN_STAGE)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": f"s{index}", "text": f"quiet words {index}"}) + "\n"
                                                 for index in range(7)))
    graph = tmp_path / "graph.yaml"
    graph.write_text("plugins: [report_test_shout]\nstages:\n"
                     f"  read: {{stage: read_text, params: {{paths: ['{tmp_path}/docs.jsonl']}}}}\n"
                     "  loud: {stage: report_test_shout, input: read}\n")
    run_graph(load_graph(graph, tmp_path / "run"), make_executor("inprocess"))
    data = collect(tmp_path / "run")
    assert data["problems"] == [] and section_statistics(data, "loud") == {"upper_documents": 7}
    result = CliRunner().invoke(report, ["--input", str(tmp_path / "run"), "--output", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    checked = check_html(tmp_path / "report" / "report.html")
    assert "Shouting: loud" in checked["headings"]
    assert "7 documents shout." in (tmp_path / "report" / "report.md").read_text()


def test_the_run_report_knows_no_stage_by_name() -> None:
    """Stage-specific sections come from the stages' hooks: run_report.py names no stage, no stage's columns or
    reasons, and copies none of the engine's file names."""
    source = (Path(__file__).parents[1] / "pipeline" / "reports" / "run_report.py").read_text()
    names = list(registered_stages())
    assert len(names) > 15 and "rewrite" in names
    for name in names:
        assert not re.search(rf"(?<![\w.]){name}(?!\w)", source), name  # `.read_text()` is no stage
    for word in ("dedup", "duplicate", "cluster", "rewrite_", "documents_lang", "_work"):
        assert word not in source, word
    for constant in ("_run.json", "_summary.json", "_events.jsonl", "_failures", "gristmill.tokens.stats",
                     "gristmill.mixture_plan"):
        assert f'"{constant}"' not in source, constant


def test_a_directory_that_is_not_a_run_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(report, ["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "report")])
    assert result.exit_code == 2
    assert "neither a Gristmill dataset nor a run directory" in result.output
    result = CliRunner().invoke(report, ["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "report")])
    assert result.exit_code == 2 and "no such directory" in result.output


def test_cluster_sizes_are_binned_by_powers_of_two_above_four() -> None:
    assert [size_bin(size) for size in (2, 3, 4, 5, 8, 9, 16, 17, 1000)] == [
        "2", "3", "4", "5-8", "5-8", "9-16", "9-16", "17-32", "513-1024"]


def test_report_json_keeps_the_same_top_keys_for_every_dataset() -> None:
    before, after = KeyTally(), KeyTally()
    before.add(pa.array(["a", "a", "a", "b", "b", "c", None]), pa.array([1] * 7), None)
    after.add(pa.array(["c", "c", "b", "d"]), pa.array([5] * 4), None)
    kept = kept_keys({"before": before, "after": after}, keep=1)
    assert kept["before"] == {"distinct": 4, "documents": {"a": 3, "c": 1}, "text_bytes": {"a": 3, "c": 1}, "tokens": {}}
    assert kept["after"] == {"distinct": 3, "documents": {"c": 2}, "text_bytes": {"c": 10}, "tokens": {}}


def test_writing_a_report_again_leaves_no_stale_figures(run_dir: Path, tmp_path: Path) -> None:
    first = CliRunner().invoke(report, ["--input", str(run_dir / "dedup"), "--output", str(tmp_path / "out")])
    assert first.exit_code == 0, first.output
    tmp_path = tmp_path / "out"
    (tmp_path / "figures" / "figure-99-from-an-older-report.png").write_bytes(b"\x89PNG")
    (tmp_path / "figures" / "notes.txt").write_text("not ours")
    result = CliRunner().invoke(report, ["--input", str(run_dir / "dedup"), "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    figures = {path.name for path in (tmp_path / "figures").iterdir()}
    markdown = (tmp_path / "report.md").read_text()
    assert "notes.txt" in figures and "figure-99-from-an-older-report.png" not in figures
    assert {name for name in figures if name.endswith(".png")} == {
        line.split("figures/")[1].rstrip(")") for line in markdown.splitlines() if line.startswith("![")}


def test_a_node_whose_other_parent_is_outside_the_run_is_not_checked_against_part_of_its_input(
        run_dir: Path, tmp_path: Path) -> None:
    for name in ("dedup", "merged", "tokens"):
        shutil.copytree(run_dir / name, tmp_path / "run" / name)
    data = collect(tmp_path / "run")
    funnel = {row["node"]: row for row in data["funnel"]}
    assert list(funnel) == ["dedup", "merged", "tokens"]
    assert data["problems"] == []  # merged read dedup and short; short is not here, so no parent check
    assert funnel["merged"]["documents_in"] > funnel["dedup"]["documents_out"]
    assert funnel["tokens"]["tokens_in"] is None and funnel["tokens"]["tokens_out"] > 0


def test_histogram_quantiles_are_within_a_bin_of_the_exact_ones() -> None:
    values = np.random.default_rng(0).lognormal(6, 1, 20_000)
    lengths = Histogram(LENGTH_EDGES, log=True)
    for part in np.array_split(values, 3):  # built batch by batch
        lengths.add(pa.array(part))
    lengths.add(pa.array([None, None], pa.float64()))
    summary = lengths.summary()
    assert summary["values"] == 20_000 and summary["nulls"] == 2
    assert summary["mean"] == pytest.approx(values.mean()) and summary["max"] == values.max()
    for key, share in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9)):
        assert summary[key] == pytest.approx(np.quantile(values, share), rel=0.01)


def test_a_dataset_inside_a_run_gets_its_wall_time_from_the_run_log(run_dir: Path, collected: dict) -> None:
    data = collect(run_dir / "pieces")
    in_run = next(row for row in collected["funnel"] if row["node"] == "pieces")
    assert data["kind"] == "dataset" and data["funnel"][0]["wall_seconds"] == in_run["wall_seconds"] > 0
    assert data["profiled"]["input"] is None and data["lengths"] == {}  # pieces are not documents with text
    assert section_statistics(data, "pieces") == section_statistics(collected, "pieces")
    assert data["exports"] == {} and data["tokenizer_eval"] is None
