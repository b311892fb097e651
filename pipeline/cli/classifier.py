"""`gristmill classifier train|eval|select-seeds`: options for fastText quality and domain classifiers.

The work is library code: classifiers/training.py trains and evaluates, classifiers/documents.py reads the labelled
documents, classifiers/seed_selection.py runs the proxy comparison. These commands parse options and print results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
from pydantic import ValidationError

from gristmill.classifiers.evaluate import write_evaluation
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
def train(output: str, holdout: float, holdout_group: str | None, max_per_label: int | None, text_column: str,
          positive: tuple[str, ...], positive_where: str | None, negative: tuple[str, ...], negative_where: str | None,
          data: tuple[str, ...], data_where: str | None, label_column: str | None, rules: str | None, **hyperparameters: Any) -> None:
    """Train a classifier and write OUTPUT/model.bin, OUTPUT/model_card.json and OUTPUT/evaluation/."""
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
