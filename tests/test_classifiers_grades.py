"""Classifiers trained on grades: fastText (binarised, per grade) and an embedding model with a linear head recover a
known grade on held-out documents; null grades are skipped and counted; the CLI path; deterministic scoring."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from gristmill.classifiers.evaluate import grade_metrics
from gristmill.classifiers.grades import (
    GradeTraining,
    fit_logistic,
    fit_ridge,
    graded_examples,
    train_grade_classifier,
)
from gristmill.classifiers.holdout import holdout_groups
from gristmill.pipeline.cli.classifier import classifier_group
from gristmill.stages.quality.embedding_model import (
    MANIFEST_FILE,
    load_embedding_classifier,
    load_grade_classifier,
)
from gristmill.stages.quality.fasttext_model import TrainingParameters, model_card

SMALL_DATA = {"epoch": 50, "lr": 0.5, "dim": 32, "bucket": 100_000, "threads": 1}
# The grade of a document is the number of distinct topics (0-5) among these eight that it has a sentence about.
TOPIC_SENTENCES = {
    "photosynthesis": ("Plants use photosynthesis to turn sunlight, water and carbon dioxide into sugar.",
                       "The leaf is where photosynthesis happens, inside small green chloroplasts.",
                       "Without photosynthesis there would be almost no oxygen in the air we breathe."),
    "volcano": ("A volcano forms where molten rock rises through cracks in the crust.",
                "The volcano erupted for three days and covered the valley in ash.",
                "Scientists measure gas and small earthquakes to predict when a volcano will erupt."),
    "democracy": ("In a democracy citizens choose their leaders in free and regular elections.",
                  "Ancient Athens is often described as the first democracy in history.",
                  "A healthy democracy needs courts and a press that are independent of the government."),
    "molecule": ("A water molecule is made of two hydrogen atoms bonded to one oxygen atom.",
                 "Each molecule of glucose stores energy in the bonds between its atoms.",
                 "Chemists draw a molecule as atoms joined by lines that stand for bonds."),
    "telescope": ("Galileo pointed a telescope at Jupiter and discovered four of its moons.",
                  "A larger telescope mirror collects more light and shows fainter stars.",
                  "The space telescope orbits above the atmosphere, where the air does not blur the image."),
    "fraction": ("A fraction such as three quarters describes part of a whole.",
                 "To add a fraction to another, first rewrite both with a common denominator.",
                 "Every fraction can be written as a decimal by dividing the top by the bottom."),
    "vaccine": ("A vaccine trains the immune system to recognise a virus before an infection.",
                "The first vaccine was developed by Edward Jenner against smallpox.",
                "Doctors give a vaccine in several doses so that protection lasts longer."),
    "glacier": ("A glacier is a slow river of ice that carves deep valleys into mountains.",
                "As the climate warms, the glacier retreats a few metres further every summer.",
                "The weight of a glacier presses snow into dense blue ice over many years."),
}
EVERYDAY_SENTENCES = (
    "We went to the shop on Saturday morning to buy bread and milk.",
    "My neighbour has a small dog that barks at every passing car.",
    "The weather was grey and windy for most of the week.",
    "She called her sister to ask about the plans for the weekend.",
    "The train was twenty minutes late because of a signal problem.",
    "He forgot his umbrella at the office again.",
    "Our team lost the match, but everyone enjoyed the game.",
    "The café on the corner serves good coffee and fresh cakes.",
    "They painted the kitchen yellow last spring.",
    "I need to remember to water the plants before we leave.",
    "The children played in the park until it got dark.",
    "Traffic on the main road was heavy this evening.",
    "We watched a film and ordered pizza for dinner.",
    "The meeting was moved to Thursday afternoon.",
    "He bought a new pair of running shoes in the sale.",
    "The library closes early on Sundays.",
    "My phone battery died halfway through the call.",
    "The bakery sold out of croissants before nine.",
    "She finally finished reading the long novel her friend lent her.",
    "There is a new restaurant opening next to the bank.",
)
DOCUMENTS = 300


def graded_documents(count: int = DOCUMENTS, seed: int = 0) -> list[dict]:
    """Three everyday sentences plus one sentence on each of `grade` distinct topics, shuffled; grades 0-5 evenly."""
    rng = random.Random(seed)
    topics = sorted(TOPIC_SENTENCES)
    rows = []
    for index in range(count):
        grade = index % 6
        sentences = [rng.choice(TOPIC_SENTENCES[topic]) for topic in rng.sample(topics, grade)]
        sentences += rng.sample(EVERYDAY_SENTENCES, 3)
        rng.shuffle(sentences)
        rows.append({"id": f"doc-{index}", "text": " ".join(sentences), "grade": grade})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def graded_file(tmp_path_factory) -> Path:
    """The graded documents plus 7 rows without a grade (null or absent), which training must skip and count."""
    rows = graded_documents()
    ungraded = [{"id": f"ungraded-{index}", "text": "An ungraded page about a volcano.", "grade": None}
                for index in range(5)] + [{"id": f"ungraded-{index}", "text": "No grade here."} for index in (5, 6)]
    return write_jsonl(tmp_path_factory.mktemp("grades") / "graded.jsonl", rows + ungraded)


@pytest.fixture(scope="module")
def embedding_classifier_dir(graded_file, tmp_path_factory) -> tuple[Path, str]:
    """An embedding classifier (default encoder, ridge head) trained through the command line."""
    output = tmp_path_factory.mktemp("embedding") / "edu"
    result = CliRunner().invoke(classifier_group, [
        "train", "--labels", str(graded_file), "--label-column", "grade", "--kind", "embedding",
        "--holdout", "0.25", "--output", str(output)])
    assert result.exit_code == 0, result.output
    return output, result.output


def test_null_grades_are_skipped_and_counted(graded_file, tmp_path):
    texts, grades, inputs, _ = graded_examples((str(graded_file),), None, "grade", "text", ("id",))
    assert len(texts) == len(grades) == DOCUMENTS
    assert inputs[0]["null_grades"] == 7 and inputs[0]["rows_selected"] == DOCUMENTS
    assert inputs[0]["grades"] == {"min": 0.0, "max": 5.0, "mean": 2.5}
    # NaN counts as missing too; a grade column of text is refused by name.
    parquet = tmp_path / "graded.parquet"
    pq.write_table(pa.table({"text": ["a b", "c d", "e f"], "grade": [1.0, float("nan"), None]}), parquet)
    _, grades, inputs, _ = graded_examples((str(parquet),), None, "grade", "text", ())
    assert grades.tolist() == [1.0] and inputs[0]["null_grades"] == 2
    pq.write_table(pa.table({"text": ["a b"], "grade": ["high"]}), parquet)
    with pytest.raises(ValueError, match="holds string, not numbers"):
        graded_examples((str(parquet),), None, "grade", "text", ())


def test_fasttext_per_grade_recovers_grades(graded_file, tmp_path):
    texts, grades, inputs, candidates = graded_examples((str(graded_file),), None, "grade", "text", ("id",))
    training = GradeTraining(label_column="grade", multiclass=True, fasttext=TrainingParameters(**SMALL_DATA))
    card = train_grade_classifier(texts, grades, training, tmp_path / "ft", inputs, 0.25,
                                  holdout_groups(texts, candidates))
    metrics = card["metrics"]
    assert metrics["documents"] >= 50 and metrics["holdout"]["group"] == "id"
    assert metrics["spearman"] >= 0.9, metrics
    assert metrics["grade_confusion_matrix"]["labels"] == ["0", "1", "2", "3", "4", "5"]
    assert sum(map(sum, metrics["grade_confusion_matrix"]["matrix"])) == metrics["documents"]
    manifest = json.loads((tmp_path / "ft" / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "fasttext" and manifest["score"] == "grade"
    scorer = load_grade_classifier(tmp_path / "ft")
    scores = scorer.score([row["text"] for row in graded_documents(60, seed=1)])
    assert scores.dtype == np.float32 and np.all((scores >= 0) & (scores <= 5))
    assert json.loads((tmp_path / "ft" / "evaluation" / "metrics.json").read_text())["spearman"] == metrics["spearman"]
    assert (tmp_path / "ft" / "evaluation" / "report.html").is_file()
    # quality_score scores the per-grade model as its expected grade, like the scorer above.
    from scipy.stats import spearmanr

    from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
    from gristmill.stages.quality.quality_score import QualityScore, QualityScoreConfig

    fresh = graded_documents(60, seed=1)
    stage = QualityScore(QualityScoreConfig(models=[{"column": "edu", "model": str(tmp_path / "ft")}]))
    stage.setup()
    batch = pa.RecordBatch.from_pylist([{"id": row["id"], "text": row["text"]} for row in fresh], schema=DOCUMENT_SCHEMA)
    staged = stage.process(batch).kept.column("edu").to_numpy()
    assert np.allclose(staged, scores)
    assert spearmanr(staged, [row["grade"] for row in fresh]).statistic >= 0.9


def test_cli_fasttext_binarised_grades(graded_file, tmp_path):
    output = tmp_path / "binary"
    result = CliRunner().invoke(classifier_group, [
        "train", "--labels", str(graded_file), "--label-column", "grade", "--threshold", "3", "--holdout", "0.25",
        "--epoch", "50", "--lr", "0.5", "--dim", "32", "--bucket", "100000", "--threads", "1",
        "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "7 row(s) with a null grade skipped" in result.output
    metrics = json.loads((output / "evaluation" / "metrics.json").read_text())
    assert metrics["score"] == "probability" and metrics["decision"] == "score >= 0.5"
    assert metrics["f1"] >= 0.9 and metrics["spearman"] >= 0.8
    assert metrics["confusion_matrix"]["labels"] == ["grade < 3", "grade >= 3"]
    # The quality_score stage reads the card's positive label: the score there is P(grade >= 3) as well.
    assert model_card(output)["positive_label"] == "positive"
    probabilities = load_grade_classifier(output).score(["A volcano, a vaccine, a glacier and a telescope.", ""])
    assert np.isnan(probabilities[1]) and 0 <= probabilities[0] <= 1


def test_embedding_head_recovers_grades_through_the_cli(embedding_classifier_dir):
    output, printed = embedding_classifier_dir
    assert "7 row(s) with a null grade skipped" in printed and "spearman" in printed
    manifest = json.loads((output / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "embedding" and manifest["score"] == "grade" and manifest["threshold"] == 3.0
    assert manifest["encoder"]["name"] == "all-MiniLM-L6-v2" and manifest["encoder"]["weights_checksum"]
    assert manifest["head"]["type"] == "ridge" and (output / manifest["head"]["file"]).is_file()
    metrics = json.loads((output / "evaluation" / "metrics.json").read_text())
    assert metrics["spearman"] >= 0.9, metrics
    assert metrics["f1"] >= 0.8 and "grade_confusion_matrix" in metrics
    card = json.loads((output / "model_card.json").read_text())
    assert card["training_data"]["inputs"][0]["null_grades"] == 7
    assert "Confusion matrix per grade" in (output / "evaluation" / "report.md").read_text()


def test_embedding_scores_are_identical_twice(embedding_classifier_dir):
    output, _ = embedding_classifier_dir
    texts = [row["text"] for row in graded_documents(40, seed=2)] + ["", None]
    classifier = load_embedding_classifier(output)
    first = classifier.score(texts, batch_size=7)
    second = load_embedding_classifier(output).score(texts, batch_size=7)
    assert first.dtype == np.float32 and first.shape == (42,)
    assert np.array_equal(first, second, equal_nan=True)
    assert np.isnan(first[-2:]).all() and not np.isnan(first[:-2]).any()
    grades = np.array([row["grade"] for row in graded_documents(40, seed=2)])
    assert grade_metrics(grades, first[:-2], 3.0, "grade")["spearman"] >= 0.9


def test_linear_heads_fit_known_functions():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 12))
    truth = features @ rng.normal(size=12) + 2.0
    ridge, record = fit_ridge(features, truth)
    assert record["alpha"] <= 1.0 and np.abs(ridge.apply(features) - truth).max() < 0.05
    logistic, record = fit_logistic(features, truth >= 2.0)
    assert record["converged"] and ((logistic.apply(features) >= 0.5) == (truth >= 2.0)).mean() > 0.97
    with pytest.raises(ValueError, match="both sides"):
        fit_logistic(features, np.ones(400, bool))


@pytest.mark.parametrize("arguments, message", [
    (["--kind", "embedding", "--data", "x.jsonl", "--label-column", "grade"], "only with --labels"),
    (["--labels", "x.jsonl"], "--labels needs --label-column"),
    (["--labels", "x.jsonl", "--label-column", "g", "--kind", "embedding", "--multiclass"], "--multiclass is a fastText"),
    (["--labels", "x.jsonl", "--label-column", "g", "--kind", "embedding", "--epoch", "3"], "not for --kind embedding"),
    (["--labels", "x.jsonl", "--label-column", "g", "--head", "classification"], "for --kind embedding"),
    (["--labels", "x.jsonl", "--label-column", "g", "--positive", "y.jsonl"], "--labels takes no"),
])
def test_grade_options_are_checked(tmp_path, arguments, message):
    result = CliRunner().invoke(classifier_group, ["train", *arguments, "--output", str(tmp_path / "out")])
    assert result.exit_code != 0 and message in result.output, result.output
