"""Graph validation: every bad config is one line naming the file and the field, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gristmill.pipeline.engine.graph import GraphError, load_graph
from tests.conftest import run_cli

GOOD = """\
stages:
  read:
    stage: read_text
    params: {paths: [in.jsonl]}
  long:
    stage: length_filter
    input: read
    params: {min_chars: 10}
"""


def check(tmp_path: Path, text: str, *expected: str) -> str:
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    with pytest.raises(GraphError) as caught:
        load_graph(path, tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message
    return message


def test_a_good_graph_loads_in_order(tmp_path: Path) -> None:
    path = tmp_path / "graph.yaml"
    path.write_text(GOOD.replace("  read:", "  z_last_declared:\n    stage: length_filter\n    input: long\n  read:"))
    graph = load_graph(path, tmp_path / "out")
    assert [node.name for node in graph.nodes] == ["read", "long", "z_last_declared"]
    assert graph.node("long").config.min_chars == 10


def test_unknown_stage(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("stage: length_filter", "stage: lenght_filter"),
          "stages.long.stage", "unknown stage 'lenght_filter'", "length_filter")


def test_unknown_param_field(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("min_chars: 10", "min_char: 10"), "stages.long.params.min_char: unknown field")


def test_unknown_node_field(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("    input: read", "    inputs: read"), "stages.long.inputs: unknown field")


def test_wrong_type(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("min_chars: 10", "min_chars: lots"),
          "stages.long.params.min_chars", "valid integer", "'lots'")


def test_value_out_of_range(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("min_chars: 10", "min_chars: -1"), "stages.long.params.min_chars", "greater than or equal")


def test_cycle(tmp_path: Path) -> None:
    text = GOOD + "  a:\n    stage: length_filter\n    input: b\n  b:\n    stage: length_filter\n    input: a\n"
    check(tmp_path, text, "stages: cycle among a -> b")


def test_missing_input(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("input: read", "input: raed"),
          "stages.long.input", "'raed' is neither a stage of this graph nor a complete dataset directory")


def test_map_stage_without_input(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("    input: read\n", ""), "stages.long.input", "needs an input")


def test_source_stage_with_input(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("    params: {paths: [in.jsonl]}", "    input: long\n    params: {paths: [in.jsonl]}"),
          "stages.read.input", "reads params.paths")


def test_missing_required_param(tmp_path: Path) -> None:
    check(tmp_path, GOOD.replace("params: {paths: [in.jsonl]}", "params: {}"), "stages.read.params.paths: Field required")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    check(tmp_path, GOOD + "  broken: [unclosed\n", "line ", "not valid YAML")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    check(tmp_path, "!!python/object/apply:os.system ['echo owned']\n", "not valid YAML")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match="no such file"):
        load_graph(tmp_path / "absent.yaml")


def test_cli_reports_config_errors_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "graph.yaml"
    path.write_text(GOOD.replace("min_chars: 10", "min_chars: lots"))
    for command in ("run", "plan"):
        result = run_cli(command, str(path), "--output", str(tmp_path / "out"), check=False)
        assert result.returncode == 2
        assert result.stderr.strip().count("\n") == 0
        assert result.stderr.startswith(f"error: {path}: stages.long.params.min_chars")
    assert not (tmp_path / "out").exists()
