"""The quality-from-annotations loop end to end on the bundled sample, with a scripted grader in place of the LLM:
grade a seeded sample (configs/quality-from-annotations.yaml), train a classifier on the grades, score, bucket and
tokenize everything (configs/quality-from-annotations-score.yaml), export, mix by level and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from gristmill.pipeline.engine.executors import InProcessExecutor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.stages.rewrite.backends import (
    Backend,
    Generation,
    Request,
    SamplingSettings,
    TransformersOptions,
)
from rich.console import Console

from tests.conftest import REPO, run_cli

CONFIGS = REPO / "configs"
SPAM_WORDS = ("buy", "cheap", "click", "casino", "discount", "price")


class RubricFollower(Backend):
    """Grades as a rubric would on the sample's kinds: advertising 0, short pages 1, long prose 4; answers in the
    tiny-grader rubric's sentence."""

    model_name = "scripted"
    context_length = 4096
    gpus = 0.0

    def __init__(self) -> None:
        self.requests = 0

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(text.split()) for text in texts]

    def generate(self, requests: list[Request], sampling: SamplingSettings) -> list[Generation]:
        self.requests += len(requests)
        generations = []
        for request in requests:
            page = request.messages[-1]["content"].split("Page:", 1)[1].lower()
            grade = 0 if sum(page.count(word) for word in SPAM_WORDS) >= 3 else 4 if len(page.split()) > 120 else 1
            answer = f"This page is rated {grade} out of 5."
            generations.append(Generation(answer, len(page.split()), len(answer.split()), "stop"))
        return generations


def run_config(name: str, output: Path) -> None:
    run_graph(load_graph(CONFIGS / name, output), InProcessExecutor(), console=Console(quiet=True))


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RubricFollower]:
    """The whole loop once, as `make quality-demo` runs it, on 240 pages."""
    run = tmp_path_factory.mktemp("quality") / "run"
    grader = RubricFollower()
    patch = pytest.MonkeyPatch()
    patch.setattr(TransformersOptions, "build", lambda self, model, max_model_len, seed: grader)
    try:
        run_cli("sample", "--output", str(run / "sample"), "--pages", "240")
        run_config("quality-from-annotations.yaml", run)
        # `${output}-grader` holds the grader and its tokenizer; here only a small tokenizer trained on the sample.
        run_cli("tokenizer", "train", "--input", str(run / "near_dedup"), "--vocab-size", "512",
                "--output", f"{run}-grader")
        run_cli("classifier", "train", "--labels", str(run / "graded"), "--label-column", "annotation_score",
                "--threshold", "2", "--epoch", "100", "--lr", "1.0", "--holdout", "0.25",
                "--output", str(run / "grade_model"))
        run_config("quality-from-annotations-score.yaml", run)
    finally:
        patch.undo()
    run_cli("export", "--input", str(run / "pieces"), "--output", str(run / "shards"))
    run_cli("mix", "--input", str(CONFIGS / "quality-from-annotations-mixture.yaml"), "--data", str(run / "shards"),
            "--output", str(run / "plan"))
    run_cli("report", "--input", str(run), "--output", str(run / "report"))
    return run, grader


def test_the_seeded_sample_is_graded_and_nothing_else(loop) -> None:
    run, grader = loop
    sample = yaml.safe_load((CONFIGS / "quality-from-annotations.yaml").read_text())["stages"]["graded"]["params"]["sample"]
    rows = ds.dataset(run / "graded").to_table(columns=["annotation_score", "annotation_reason"]).to_pylist()
    graded = [row for row in rows if row["annotation_reason"] != "not_sampled"]
    assert len(graded) == sample == grader.requests
    assert all(row["annotation_score"] in (0.0, 1.0, 4.0) and row["annotation_reason"] is None for row in graded)
    assert {row["annotation_score"] for row in graded} >= {1.0, 4.0}  # both sides of the threshold
    assert all(row["annotation_score"] is None for row in rows if row["annotation_reason"] == "not_sampled")


def test_the_classifier_trains_on_the_grades_with_held_out_metrics(loop) -> None:
    run, _ = loop
    manifest = json.loads((run / "grade_model" / "gristmill_classifier.json").read_text())
    assert manifest["kind"] == "fasttext" and manifest["label_column"] == "annotation_score"
    assert manifest["threshold"] == 2
    metrics = json.loads((run / "grade_model" / "evaluation" / "metrics.json").read_text())
    assert metrics["documents"] > 0 and metrics["positives"] > 0 and metrics["negatives"] > 0
    assert {"accuracy", "f1", "spearman"} <= metrics.keys()


def test_every_document_gets_a_score_and_a_level(loop) -> None:
    run, _ = loop
    levels = ds.dataset(run / "levels").to_table(columns=["edu", "quality_bucket", "num_tokens"])
    graded = ds.dataset(run / "graded").count_rows()
    assert levels.num_rows == graded  # scoring, tokenizing and bucketing drop nothing
    assert levels.column("quality_bucket").null_count == 0 and levels.column("edu").null_count == 0
    buckets = levels.column("quality_bucket").to_numpy()
    assert buckets.min() >= 0 and buckets.max() <= 9 and len(set(buckets.tolist())) > 2


def test_the_mixture_plan_takes_only_the_chosen_levels(loop) -> None:
    run, _ = loop
    plan = json.loads((run / "plan" / "plan.json").read_text())
    rows = np.load(run / "plan" / "plan.npy")
    assert len(rows) == plan["sequences"] > 0
    wanted = {"high": range(7, 10), "middle": range(4, 7)}
    names = {component["index"]: component["name"] for component in plan["components"]}
    levels = {}
    for index, entry in enumerate(plan["files"]):
        sidecar = (run / "plan" / entry["path"]).with_name(Path(entry["path"]).name + ".sequences.parquet")
        levels[index] = pq.read_table(sidecar, columns=["quality_bucket"]).column("quality_bucket").to_pylist()
    taken = {name: set() for name in wanted}
    for component, file, sequence in rows.tolist():
        taken[names[component]].add(levels[file][sequence])
    for name, allowed in wanted.items():
        assert taken[name] and taken[name] <= set(allowed), (name, taken[name])


def test_the_run_report_shows_grades_and_documents_per_level(loop) -> None:
    run, _ = loop
    report = (run / "report" / "report.md").read_text()
    grades = report.split("## Annotate: graded", 1)[1].split("\n## ", 1)[0]
    assert "| outcome | documents |" in grades and "| 4 |" in grades and "| unscored: not_sampled |" in grades
    levels = report.split("## Quality buckets: levels", 1)[1].split("\n## ", 1)[0]
    assert "| level | scores above | documents | share | tokens |" in levels
    assert all(f"\n| {level} |" in levels for level in range(10))
