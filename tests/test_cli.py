"""The command line as users meet it: single stages, plan, inspect's JSON contract and help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    assert "--min_words" in result.stderr or "--min-words" in result.stderr
    result = run_cli("length-filter", "--input", str(tmp_path / "absent"), "--output", str(tmp_path / "out"), check=False)
    assert result.returncode == 2 and "neither a stage of this graph nor a complete dataset directory" in result.stderr


def test_inspect_json_contract(tmp_path: Path, corpus: Path) -> None:
    run_cli("run", str(write_graph(tmp_path / "g.yaml", corpus)), "--output", str(tmp_path / "run"), "--executor", "inprocess")
    report = json.loads(run_cli("inspect", str(tmp_path / "run" / "read"), "--json").stdout)
    assert report["stage"] == "read_text"
    assert report["shards"] == 4
    assert report["rows"] == 1200
    assert report["rejected"] == {"malformed_json": 4, "missing_text": 4}
    assert report["schema"]["text"] == "string"
    assert len(report["sample"]) == 3
    human = run_cli("inspect", str(tmp_path / "run" / "read")).stdout
    assert "malformed_json" in human and "1,200 of 1,208 in" in human


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
    blocklist.write_text("spam.example\nads.example\n")
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
    text = run_cli("dedup-plan", str(tmp_path / "run" / "long"), "--threshold", "0.8").stdout
    assert "bands 16 x rows 8" in text
    assert "  0.80  0.9470" in text
    assert "expected peak memory per worker" in text
    missing = run_cli("dedup-plan", str(tmp_path / "absent"), check=False)
    assert missing.returncode == 2 and "no _manifest.json" in missing.stderr
