"""A stage written in one file outside Gristmill is a first-class stage: a subcommand with generated help, a
graph node on every executor with its own run report section, and a plain module its author tests with pytest;
no edit to Gristmill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gristmill.pipeline.engine.dataset import Dataset
from tests.conftest import REPO, write_corpus

GRISTMILL = Path(sys.executable).parent / "gristmill"

MY_STAGE = textwrap.dedent('''
    """Drop pages that name a word of my choosing."""

    import pyarrow as pa
    import pyarrow.compute as pc
    from pydantic import Field

    from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register
    from gristmill.pipeline.engine.stage_report import ReportedDataset, StageSection


    class BannedWordConfig(StageConfig):
        word: str = Field(description="Pages whose text holds this word are dropped.")
        ignore_case: bool = Field(default=False, description="Match the word in any case.")


    @register
    class BannedWord(MapStage):
        """Drop pages that hold a banned word, with the reason banned_word."""

        name = "my_stage"
        Config = BannedWordConfig

        def process(self, batch: pa.RecordBatch) -> BatchResult:
            hits = pc.match_substring(batch.column("text"), self.config.word, ignore_case=self.config.ignore_case)
            reasons = pc.if_else(hits, "banned_word", pa.nulls(len(batch), pa.string()))
            return BatchResult.split(batch, reasons, pc.if_else(hits, self.config.word, pa.nulls(len(batch), pa.string())))

        @classmethod
        def report_sections(cls, dataset: ReportedDataset) -> list[StageSection]:
            word = dataset.config.get("word")
            return [StageSection(f"Banned word: {dataset.name}", {"word": word}).text(f"Pages naming {word!r} are gone.")]


    def test_pages_holding_the_word_are_dropped_with_a_reason():
        batch = pa.record_batch({"id": ["a", "b", "c"], "text": ["grain and flour", "the Mill turns", "a mill"]})
        result = BannedWord(BannedWordConfig(word="mill", ignore_case=True)).process(batch)
        assert result.kept.column("id").to_pylist() == ["a"]
        assert result.rejected.column("reason").to_pylist() == ["banned_word", "banned_word"]
''')


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    """A folder outside the repository holding one stage file, as a user would write it."""
    directory = tmp_path / "my_project"
    directory.mkdir()
    (directory / "my_stage.py").write_text(MY_STAGE)
    assert REPO not in directory.parents
    return directory


def gristmill(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed `gristmill` command, run where the user keeps their stage (that folder is not on PYTHONPATH)."""
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "GRISTMILL_PLUGINS")}
    return subprocess.run([str(GRISTMILL), *args], capture_output=True, text=True, cwd=cwd,
                          env=environment | (env or {}), timeout=240)


def read_corpus(plugin_dir: Path) -> Path:
    """A dataset of documents made by the built-in read_text stage, for the plugin stage to read."""
    write_corpus(plugin_dir / "corpus", files=3, docs_per_file=60)
    result = gristmill("read-text", "--input", "corpus/*.jsonl", "--output", "documents", "--executor", "inprocess",
                       cwd=plugin_dir)
    assert result.returncode == 0, result.stderr
    return plugin_dir / "documents"


def documents_with(dataset: Path, word: str) -> int:
    return sum(word in text for batch in Dataset(dataset).iter_batches() for text in batch.column("text").to_pylist())


def test_the_plugin_authors_own_test_passes(plugin_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "my_stage.py"],
                            capture_output=True, text=True, cwd=plugin_dir, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_plugin_stage_is_a_subcommand_with_generated_help(plugin_dir: Path) -> None:
    listed = gristmill("--plugin", "my_stage", "--help", cwd=plugin_dir)
    assert listed.returncode == 0, listed.stderr
    assert "my-stage" in listed.stdout and "Drop pages that hold a banned word" in listed.stdout

    help_text = gristmill("--plugin", "my_stage", "my-stage", "--help", cwd=plugin_dir)
    assert help_text.returncode == 0, help_text.stderr
    words = " ".join(help_text.stdout.split())
    assert "--word STR Pages whose text holds this word are dropped. [required]" in words
    assert "--ignore-case / --no-ignore-case Match the word in any case. [default: False]" in words
    assert "--executor [inprocess|local|dask]" in words

    from_environment = gristmill("my-stage", "--help", cwd=plugin_dir, env={"GRISTMILL_PLUGINS": "my_stage"})
    assert from_environment.returncode == 0, from_environment.stderr
    assert "--word STR" in from_environment.stdout

    without_plugin = gristmill("my-stage", "--help", cwd=plugin_dir)
    assert without_plugin.returncode == 2 and "No such command 'my-stage'" in without_plugin.stderr


def test_a_plugin_stage_runs_as_one_command_on_worker_processes(plugin_dir: Path) -> None:
    documents = read_corpus(plugin_dir)
    result = gristmill("--plugin", "my_stage", "my-stage", "--input", "documents", "--output", "no_mill",
                       "--word", "mill", "--executor", "local", "--workers", "2", cwd=plugin_dir)
    assert result.returncode == 0, result.stderr

    output = Dataset(plugin_dir / "no_mill").manifest()
    with_mill = documents_with(documents, "mill")
    assert output.stage == "my_stage"
    assert 0 < with_mill < Dataset(documents).manifest().rows
    assert output.rejected == {"banned_word": with_mill}
    assert output.rows == Dataset(documents).manifest().rows - with_mill
    assert documents_with(plugin_dir / "no_mill", "mill") == 0


@pytest.mark.slow
def test_a_graph_naming_a_plugin_stage_plans_runs_on_dask_and_reports(plugin_dir: Path) -> None:
    write_corpus(plugin_dir / "corpus", files=3, docs_per_file=60)
    (plugin_dir / "graph.yaml").write_text(textwrap.dedent("""
        name: mine
        plugins: [my_stage]
        stages:
          read: {stage: read_text, params: {paths: ["${config_dir}/corpus/*.jsonl"]}}
          no_grain: {stage: my_stage, input: read, params: {word: grain}}
    """))
    plan = gristmill("plan", "graph.yaml", "--output", "run", cwd=plugin_dir)
    assert plan.returncode == 0, plan.stderr
    assert any(line.split()[:2] == ["no_grain", "my_stage"] for line in plan.stdout.splitlines()), plan.stdout

    result = gristmill("run", "graph.yaml", "--output", "run", "--executor", "dask", "--workers", "1", cwd=plugin_dir)
    assert result.returncode == 0, result.stderr
    with_grain = documents_with(plugin_dir / "run" / "read", "grain")
    assert with_grain > 0
    assert Dataset(plugin_dir / "run" / "no_grain").manifest().rejected == {"banned_word": with_grain}

    report = gristmill("--plugin", "my_stage", "report", "--input", "run", "--output", "report", cwd=plugin_dir)
    assert report.returncode == 0, report.stderr
    assert "warning" not in report.stderr
    contents = json.loads((plugin_dir / "report" / "report.json").read_text())
    funnel = {row["node"]: row for row in contents["funnel"]}
    assert funnel["no_grain"]["stage"] == "my_stage"
    assert funnel["no_grain"]["reasons"] == {"banned_word": with_grain}
    assert funnel["no_grain"]["documents_in"] - funnel["no_grain"]["documents_out"] == with_grain
    assert contents["stage_sections"] == [{"node": "no_grain", "stage": "my_stage", "title": "Banned word: no_grain",
                                           "statistics": {"word": "grain"}}]
    assert "## Banned word: no_grain" in (plugin_dir / "report" / "report.md").read_text()

    unloaded = gristmill("report", "--input", "run", "--output", "report_without_plugin", cwd=plugin_dir)
    assert "warning: no_grain: stage 'my_stage' is not loaded (name its module with --plugin)" in unloaded.stderr


@pytest.mark.parametrize("module, source, expected", [
    ("no_such_stage", None, "no module named 'no_such_stage' (not installed, not on PYTHONPATH, not in the current directory)"),
    ("needs_a_library", "import a_library_nobody_has\n", "it imports 'a_library_nobody_has', which is not installed"),
    ("broken_stage", "def stage(:\n    pass\n", "{directory}/broken_stage.py:1: invalid syntax"),
    ("raising_stage", "raise RuntimeError('no config file')\n", "importing failed: RuntimeError: no config file"),
])
def test_a_plugin_that_cannot_load_is_one_line(plugin_dir: Path, module: str, source: str | None, expected: str) -> None:
    if source is not None:
        (plugin_dir / f"{module}.py").write_text(source)
    line = f"error: --plugin {module}: " + expected.format(directory=plugin_dir)
    result = gristmill("--plugin", module, "--help", cwd=plugin_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line]
    from_environment = gristmill("run", "graph.yaml", cwd=plugin_dir, env={"GRISTMILL_PLUGINS": f"my_stage,{module}"})
    assert from_environment.returncode == 2
    assert from_environment.stderr.strip().splitlines() == [line.replace("--plugin", "GRISTMILL_PLUGINS:")]


def test_the_top_level_help_imports_no_model_library() -> None:
    code = ("import sys\nfrom gristmill.pipeline.cli.main import cli\n"
            "try:\n    cli(['--help'], prog_name='gristmill')\nexcept SystemExit:\n    pass\n"
            "print(sorted(name for name in ('torch', 'transformers', 'vllm', 'sklearn', 'lightgbm') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "length-filter" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_plugin_stage_named_like_a_command_is_refused_in_one_line(plugin_dir: Path) -> None:
    (plugin_dir / "clashing_stage.py").write_text(MY_STAGE.replace('name = "my_stage"', 'name = "report"'))
    result = gristmill("--plugin", "clashing_stage", "report", "--help", cwd=plugin_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: stage 'report' (clashing_stage) has the name of the command `gristmill report`; rename the stage"]
