"""The command line as users meet it: single stages, plan, inspect's JSON contract and help."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gristmill.pipeline.cli.main import cli
from gristmill.pipeline.cli.options import input_option
from tests.conftest import data_files, run_cli, write_graph


def test_single_stage_commands_match_the_graph(tmp_path: Path, corpus: Path) -> None:
    run_cli("run", str(write_graph(tmp_path / "g.yaml", corpus)), "--output", str(tmp_path / "graph"),
            "--executor", "inprocess")
    run_cli("read-text", "--input", f"{corpus}/*.jsonl", "--output", str(tmp_path / "read"), "--executor", "inprocess")
    run_cli("length-filter", "--input", str(tmp_path / "read"), "--output", str(tmp_path / "long"),
            "--min-words", "20", "--max-chars", "2000", "--workers", "2")
    from_graph = data_files(tmp_path / "graph")
    for node in ("read", "long"):
        # Ledgers differ only in naming the node ("read" in the graph, "read_text" alone), so compare data.
        alone = {name: data for name, data in data_files(tmp_path / node).items() if not name.startswith("_")}
        assert alone == {name.removeprefix(f"{node}/"): data for name, data in from_graph.items()
                         if name.startswith(f"{node}/part-")}
        assert len(alone) == 4


def test_single_stage_errors_name_the_option(tmp_path: Path, corpus: Path) -> None:
    result = run_cli("length-filter", "--input", str(corpus), "--output", str(tmp_path / "out"), "--min-words", "many",
                     check=False)
    assert result.returncode == 2
    assert "error: gristmill length-filter: --min-words: Input should be a valid integer" in result.stderr
    assert "--min_words" not in result.stderr
    result = run_cli("length-filter", "--input", str(tmp_path / "absent"), "--output", str(tmp_path / "out"), check=False)
    assert result.returncode == 2 and "neither a stage of this graph nor a complete dataset directory" in result.stderr


def test_inspect_json_contract(tmp_path: Path, corpus: Path) -> None:
    run_cli("run", str(write_graph(tmp_path / "g.yaml", corpus)), "--output", str(tmp_path / "run"), "--executor", "inprocess")
    report = json.loads(run_cli("inspect", "--input", str(tmp_path / "run" / "read"), "--json").stdout)
    assert report["stage"] == "read_text"
    assert report["shards"] == 4
    assert report["rows"] == 1200
    assert report["rejected"] == {"malformed_json": 4, "missing_text": 4}
    assert report["schema"]["text"] == "string"
    assert len(report["sample"]) == 3
    human = run_cli("inspect", "--input", str(tmp_path / "run" / "read")).stdout
    assert "malformed_json" in human and "1,200 of 1,208 in" in human


def test_inspect_samples_matching_rows_and_shows_chosen_columns_in_full(tmp_path: Path, corpus: Path) -> None:
    run_cli("run", str(write_graph(tmp_path / "g.yaml", corpus)), "--output", str(tmp_path / "run"), "--executor", "inprocess")
    read = str(tmp_path / "run" / "read")
    report = json.loads(run_cli("inspect", "--input", read, "--json", "--sample", "5",
                                "--where", 'url == "https://www.site2.example/7"', "--columns", "id,text").stdout)
    assert [list(row) for row in report["sample"]] == [["id", "text"]]
    assert report["sample"][0]["id"] == "doc-2-7"
    human = run_cli("inspect", "--input", read, "--where", 'id == "doc-2-7"', "--columns", "text").stdout
    assert report["sample"][0]["text"] in human  # in full, not cut at 120 characters
    missing = run_cli("inspect", "--input", read, "--columns", "nope", check=False)
    assert missing.returncode == 2 and "--columns: 'nope' is not a column" in missing.stderr


def test_plan_shows_progress_of_a_run(tmp_path: Path, corpus: Path) -> None:
    graph = str(write_graph(tmp_path / "g.yaml", corpus))
    before = run_cli("plan", graph, "--output", str(tmp_path / "run")).stdout
    assert "0/4 shards done" in before and "waiting for read" in before
    run_cli("run", graph, "--output", str(tmp_path / "run"), "--executor", "inprocess")
    after = run_cli("plan", graph, "--output", str(tmp_path / "run")).stdout
    assert after.count("4/4 shards done") == 2 and after.count("complete") == 2
    again = run_cli("run", graph, "--output", str(tmp_path / "run"), "--executor", "inprocess")
    assert "already complete" in again.stderr


def test_changed_config_is_not_mixed_into_an_old_output(tmp_path: Path, corpus: Path) -> None:
    graph = write_graph(tmp_path / "g.yaml", corpus)
    run_cli("run", str(graph), "--output", str(tmp_path / "run"), "--executor", "inprocess")
    graph.write_text(graph.read_text().replace("min_words: 20", "min_words: 30"))
    result = run_cli("run", str(graph), "--output", str(tmp_path / "run"), "--executor", "inprocess", check=False)
    assert result.returncode == 2
    assert f"{tmp_path / 'run' / 'long'}: made with a different config" in result.stderr



def test_a_changed_file_named_in_params_is_not_mixed_into_an_old_output(tmp_path: Path, corpus: Path) -> None:
    """A block-list (like a model or tokenizer) edited in place changes what the stage does, so it changes the
    config hash even though the YAML is the same; unrelated input data is not read for this."""
    blocklist = tmp_path / "domains.txt"
    blocklist.write_text("spam.example\n")
    graph = write_graph(tmp_path / "g.yaml", corpus, extra_stages=f"  urls:\n    stage: url_filter\n    input: long\n"
                                                               f"    params: {{domains_file: '{blocklist}'}}\n")
    run_cli("run", str(graph), "--output", str(tmp_path / "run"), "--executor", "inprocess")
    again = run_cli("run", str(graph), "--output", str(tmp_path / "run"), "--executor", "inprocess")
    assert "already complete" in again.stderr
    # Moved elsewhere with the same contents (mv keeps modification times): the same config, so it resumes.
    moved = tmp_path / "lists" / "domains.txt"
    moved.parent.mkdir()
    blocklist.rename(moved)
    graph.write_text(graph.read_text().replace(str(blocklist), str(moved)))
    assert "already complete" in run_cli("run", str(graph), "--output", str(tmp_path / "run"), "--executor", "inprocess").stderr
    moved.write_text("spam.example\nads.example\n")
    result = run_cli("run", str(graph), "--output", str(tmp_path / "run"), "--executor", "inprocess", check=False)
    assert result.returncode == 2
    assert f"{tmp_path / 'run' / 'urls'}: made with a different config" in result.stderr


@pytest.mark.parametrize("command", [[], ["run"], ["plan"], ["inspect"], ["sample"], ["read-text"], ["length-filter"]])
def test_help_is_informative_at_every_level(command: list[str]) -> None:
    text = run_cli(*command, "--help").stdout
    assert "Usage: gristmill" in text
    assert len(text.splitlines()) > 6
    if command in (["run"], ["read-text"], ["length-filter"]):
        assert "--scheduler" in text and "--workers" in text


def test_dedup_plan_prints_banding_and_the_s_curve(tmp_path: Path, corpus: Path) -> None:
    run_cli("run", str(write_graph(tmp_path / "g.yaml", corpus)), "--output", str(tmp_path / "run"), "--executor", "inprocess")
    text = run_cli("dedup-plan", "--input", str(tmp_path / "run" / "long"), "--threshold", "0.8").stdout
    assert "bands 16 x rows 8" in text
    assert "  0.80  0.9470" in text
    assert "expected peak memory per worker" in text
    missing = run_cli("dedup-plan", "--input", str(tmp_path / "absent"), check=False)
    assert missing.returncode == 2 and "no _manifest.json" in missing.stderr


@pytest.mark.parametrize("arguments, message", [
    (["length-filter", "--min-chars", "50", "--max-chars", "10"],
     "gristmill length-filter: Value error, --max-chars must be at least --min-chars"),
    (["decontaminate", "--benchmarks", '{"name": "quiz", "paths": ["quiz.jsonl"], "fields": []}'],
     "gristmill decontaminate: --benchmarks (value 1, fields): List should have at least 1 item after validation, not 0"),
    (["decontaminate", "--benchmarks", '{"name": "quiz", "paths": ["quiz.jsonl"]}', "--min-item-words", "20"],
     "gristmill decontaminate: Value error, --min-item-words must be at most --ngram-words"),
])
def test_stage_errors_name_flags_as_typed_also_inside_nested_values(tmp_path: Path, arguments: list[str],
                                                                    message: str) -> None:
    (tmp_path / "in" / "_manifest.json").parent.mkdir()
    (tmp_path / "in" / "_manifest.json").write_text("{}")
    result = CliRunner().invoke(cli, [*arguments, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1


def test_input_takes_several_paths_after_one_flag_and_repeated(tmp_path: Path, corpus: Path) -> None:
    files = sorted(str(path) for path in corpus.glob("*.jsonl"))
    run_cli("read-text", "--input", f"{corpus}/*.jsonl", "--output", str(tmp_path / "glob"), "--executor", "inprocess")
    listed = run_cli("read-text", "--input", *files[:3], "--input", files[3], "--output", str(tmp_path / "listed"),
                     "--executor", "inprocess", "--text-field", "text")
    assert "note:" not in listed.stderr
    assert data_files(tmp_path / "listed") == data_files(tmp_path / "glob")
    assert len([name for name in data_files(tmp_path / "glob") if name.startswith("part-")]) == 4


@pytest.mark.parametrize("command, old, extra", [
    (["tokenizer", "train"], ["DATASET"], ["--vocab-size", "300", "--output", "OUT"]),
    (["tokenizer", "eval"], ["--dataset", "DATASET"], ["--tokenizer", "tiktoken:cl100k_base", "--output", "OUT"]),
    (["export"], ["DATASET"], ["--output", "OUT"]),
    (["verify"], ["DATASET"], []),
    (["report"], ["DATASET"], ["--output", "OUT"]),
    (["mix"], ["DATASET"], ["--output", "OUT"]),
    (["sweep"], ["DATASET"], ["--output", "OUT"]),
])
def test_every_command_reads_its_input_from_input_and_still_takes_the_old_spelling(
        tmp_path: Path, command: list[str], old: list[str], extra: list[str]) -> None:
    """`--input X` and the old spelling reach the command alike (here: the same one-line error about X); the old
    one adds a deprecation note. Two paths where one is meant are refused by name."""
    absent = str(tmp_path / "absent.yaml")
    extra = [str(tmp_path / "out") if value == "OUT" else value for value in extra]
    new = CliRunner().invoke(cli, [*command, "--input", absent, *extra])
    assert new.exit_code != 0 and absent in new.stderr and "note:" not in new.stderr
    legacy = CliRunner().invoke(cli, [*command, *[absent if value == "DATASET" else value for value in old], *extra])
    note, _, rest = legacy.stderr.partition("\n")
    spelling = "the positional" if old == ["DATASET"] else "--dataset"
    assert note.startswith(f"note: {spelling} ") and note.endswith(" is deprecated; use --input " + note.split()[-1])
    assert (legacy.exit_code, rest) == (new.exit_code, new.stderr)
    existing = str(tmp_path) if command == ["verify"] else absent  # verify checks that its directory exists first
    both = CliRunner().invoke(cli, [*command, "--input", existing, existing, *extra])
    assert both.exit_code == 2 and "Invalid value for '--input': takes one" in both.stderr
    help_text = CliRunner().invoke(cli, [*command, "--help"]).stdout
    assert "--input" in help_text and "[required]" in help_text


def test_input_option_merges_spellings_in_order_and_requires_one() -> None:
    @click.command()
    @input_option("paths", "Files.", metavar="FILE")
    @click.option("--flag", is_flag=True)
    def show(paths: tuple[str, ...], flag: bool) -> None:
        click.echo(" ".join(paths) + f" flag={flag}")

    runner = CliRunner()
    assert runner.invoke(show, ["--input", "a", "b", "--flag", "--input", "c"]).stdout == "a b c flag=True\n"
    assert runner.invoke(show, ["--input=a", "--input", "b"]).stdout == "a b flag=False\n"
    old = runner.invoke(show, ["x", "y", "--input", "a"])
    assert old.stdout == "a x y flag=False\n"
    assert old.stderr == "note: the positional FILE is deprecated; use --input FILE\n"
    missing = runner.invoke(show, ["--flag"])
    assert missing.exit_code == 2 and "Missing option '--input'" in missing.stderr
    help_text = " ".join(runner.invoke(show, ["--help"]).stdout.split())
    assert "--input FILE [FILE ...] Files. Several after one --input, or --input repeated. [required]" in help_text
