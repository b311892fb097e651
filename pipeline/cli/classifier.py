"""`gristmill classifier train|eval`: fit fastText quality or domain classifiers on selected documents and evaluate them.

Training writes a classifier directory: the model, a model card (data hashes and sizes, parameters, seeds,
held-out metrics) and an evaluation report, so any score in a dataset can be traced to what made it.
"""

from __future__ import annotations

import ast
import glob
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import ValidationError

from gristmill.classifiers.domain import load_rules, seed_labels
from gristmill.classifiers.evaluate import binary_metrics, multiclass_metrics, write_evaluation
from gristmill.stages.quality.fasttext_model import (
    CARD_FILE,
    MODEL_FILE,
    FastTextClassifier,
    TrainingParameters,
    model_card,
    train_fasttext,
)
from gristmill.classifiers.holdout import (
    AUTOMATIC_GROUP_COLUMNS,
    VALIDATION_SEED,
    HoldoutGroups,
    holdout_groups,
    holdout_mask,
    key_columns,
)
from gristmill.stages.quality.preprocess import PREPROCESSING, tokenize
from gristmill.classifiers.seed_selection import SeedCandidate, TrainerProxyRunner, select_seed_set
from gristmill.pipeline.cli.options import PathsOption, fail, owned_output
from gristmill.pipeline.engine.dataset import file_checksum
from gristmill.stages.ingest.read_text import open_text

POSITIVE, NEGATIVE = "positive", "negative"
EVALUATION_DIR = "evaluation"
COMPARISONS = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
               ">=": pc.greater_equal}
SYMBOLS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.In: "in"}


@dataclass(frozen=True)
class Condition:
    """`column op literal`, the whole filter language: parsed, never evaluated."""

    column: str
    operator: str
    value: Any

    def mask(self, table: pa.Table) -> pa.Array:
        """Rows that satisfy the condition; a null value never does."""
        if self.column not in table.column_names:
            raise ValueError(f"filter column {self.column!r} is not in the data (columns: {', '.join(table.column_names)})")
        column = table.column(self.column)
        try:
            if self.operator == "in":
                matched = pc.is_in(column, value_set=pa.array(self.value))
            else:
                matched = COMPARISONS[self.operator](column, pa.scalar(self.value))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise ValueError(f"filter {self.column} {self.operator} {self.value!r}: cannot compare a "
                             f"{column.type} column with {type(self.value).__name__}") from None
        return pc.fill_null(matched, False)


def parse_where(expression: str) -> Condition:
    """Parse `column op literal` (op: == != < <= > >= in) with Python's parser; literals only, nothing runs."""
    problem = f"cannot read filter {expression!r}: expected `column op literal`, op one of == != < <= > >= in"
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(problem) from None
    if not (isinstance(tree, ast.Compare) and len(tree.ops) == 1 and isinstance(tree.left, ast.Name)):
        raise ValueError(problem)
    try:
        value = ast.literal_eval(tree.comparators[0])
    except ValueError:
        raise ValueError(f"{problem}; the right-hand side must be a literal (string, number, bool or list)") from None
    symbol = SYMBOLS.get(type(tree.ops[0]))
    if symbol == "in":
        if not isinstance(value, (list, tuple, set)) or not value:
            raise ValueError(f"{problem}; `in` needs a non-empty list")
        return Condition(tree.left.id, "in", sorted(value, key=str))
    if symbol is None or isinstance(value, (list, tuple, set, dict)):
        raise ValueError(problem)
    return Condition(tree.left.id, symbol, value)


def input_files(path: str) -> list[Path]:
    """A dataset directory's shards, a glob's matches, or one file (Parquet or JSONL, maybe .gz/.zst)."""
    if glob.has_magic(path):
        files = [Path(match) for match in sorted(glob.glob(path))]
    elif Path(path).is_dir():
        files = sorted(Path(path).glob("*.parquet"))
    else:
        files = [Path(path)]
    missing = [str(file) for file in files if not file.is_file()]
    if not files or missing:
        raise ValueError(f"{path}: no input files found" + (f" ({', '.join(missing)} missing)" if missing else ""))
    return files


def read_file(path: Path, columns: list[str]) -> tuple[pa.Table, int]:
    """The wanted columns (nulls where a file lacks one) and the count of malformed JSONL lines skipped.

    The first column is the text: a JSONL value there that is not a string counts as missing.
    """
    try:
        table, malformed = _read_columns(path, columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ValueError(f"{path}: cannot read columns {columns}: {error}") from None
    for name in columns:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows))
    return table.select(columns), malformed


def _read_columns(path: Path, columns: list[str]) -> tuple[pa.Table, int]:
    if path.name.endswith(".parquet"):
        present = set(pq.read_schema(path).names)
        table = pq.read_table(path, columns=[name for name in columns if name in present])
        malformed = 0
    else:
        rows, malformed = [], 0
        with open_text(str(path)) as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    malformed += 1
                    continue
                if not isinstance(record, dict):
                    malformed += 1
                    continue
                row = {name: record.get(name) for name in columns}
                row[columns[0]] = row[columns[0]] if isinstance(row[columns[0]], str) else None
                rows.append(row)
        table = pa.Table.from_pylist(rows) if rows else pa.table({name: pa.nulls(0) for name in columns})
    return table, malformed


def read_documents(path: str, where: str | None, columns: list[str], role: str) -> tuple[pa.Table, dict[str, Any]]:
    """Documents of one input, narrowed by a filter, and a provenance record (files, sizes, hashes, counts)."""
    condition = parse_where(where) if where else None
    wanted = list(dict.fromkeys([*columns, *([condition.column] if condition else [])]))
    tables, files, malformed = [], [], 0
    for file in input_files(path):
        table, bad_lines = read_file(file, wanted)
        tables.append(table)
        malformed += bad_lines
        files.append({"path": str(file), "bytes": file.stat().st_size, "checksum": file_checksum(file)})
    table = pa.concat_tables(tables, promote_options="permissive")
    rows_read = table.num_rows
    if condition:
        table = table.filter(condition.mask(table))
    text = table.column(columns[0])
    table = table.filter(pc.fill_null(pc.greater(pc.utf8_length(text.cast(pa.string())), 0), False))
    record = {"role": role, "path": path, "where": where, "files": files, "rows_read": rows_read,
              "malformed_lines": malformed, "rows_selected": table.num_rows}
    return table.select(columns), record


def cap_per_label(labels: np.ndarray, texts: pa.Array, limit: int | None) -> np.ndarray:
    """Rows to keep so that no label has more than `limit` documents: those with the smallest text hashes."""
    keep = np.ones(len(labels), bool)
    if limit is None:
        return keep
    hashes = np.fromiter((xxhash.xxh64_intdigest(text.encode()) for text in texts.to_pylist()), np.uint64, len(texts))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) > limit:
            keep[members[np.argsort(hashes[members], kind="stable")[limit:]]] = False
    return keep


def evaluate_classifier(classifier: FastTextClassifier, tokens: pa.ListArray, truth: np.ndarray,
                        positive_label: str | None, threshold: float = 0.5) -> dict[str, Any]:
    """Binary metrics when a positive label is named (truth: POSITIVE/NEGATIVE), multi-class metrics otherwise."""
    probabilities = classifier.predict(tokens)
    if positive_label is None:
        return multiclass_metrics(truth.tolist(), probabilities, classifier.labels)
    if positive_label not in classifier.labels:
        raise ValueError(f"positive label {positive_label!r} is not one of the model's labels {list(classifier.labels)}")
    return binary_metrics(truth == POSITIVE, probabilities[:, classifier.labels.index(positive_label)], threshold)


def train_classifier(texts: pa.Array, labels: np.ndarray, parameters: TrainingParameters, output: Path,
                     inputs: list[dict[str, Any]], holdout_fraction: float, binary: bool,
                     groups: HoldoutGroups | None = None) -> dict[str, Any]:
    """Split by group (default: by text), train (with NaN retries), evaluate on the held-out split and write
    model, card and report."""
    groups = groups or holdout_groups(texts, pa.table({}))
    held_out = holdout_mask(groups.keys, holdout_fraction)
    validation = holdout_mask(groups.keys, 0.1, VALIDATION_SEED) & ~held_out if parameters.autotune_seconds else None
    training = ~held_out if validation is None else ~held_out & ~validation
    tokens = tokenize(texts)
    train_tokens, train_labels = tokens.filter(pa.array(training)), labels[training].tolist()
    if len(set(train_labels)) < 2:
        raise ValueError(f"training needs at least two labels with documents, got {sorted(set(train_labels))}")
    run = train_fasttext(train_tokens, train_labels, parameters,
                         None if validation is None else (tokens.filter(pa.array(validation)), labels[validation].tolist()))
    output.mkdir(parents=True, exist_ok=True)
    run.model.save_model(str(output / MODEL_FILE))
    classifier = FastTextClassifier(run.model)
    metrics = None
    if held_out.any():
        metrics = evaluate_classifier(classifier, tokens.filter(pa.array(held_out)), labels[held_out],
                                      POSITIVE if binary else None) | {"holdout": groups.describe()}
        write_evaluation(metrics, output / EVALUATION_DIR, f"Held-out evaluation of {output.name}")

    def counts(mask: np.ndarray) -> dict[str, int]:
        names, numbers = np.unique(labels[mask], return_counts=True)
        return {str(name): int(number) for name, number in zip(names, numbers)}

    card = {
        "format": "gristmill.classifier",
        "kind": "binary" if binary else "multiclass",
        "labels": list(classifier.labels),
        "positive_label": POSITIVE if binary else None,
        "preprocessing": PREPROCESSING,
        "model_file": MODEL_FILE,
        "model_bytes": (output / MODEL_FILE).stat().st_size,
        "model_checksum": file_checksum(output / MODEL_FILE),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": {name: _version(name) for name in ("gristmill", "fasttext-wheel", "numpy", "pyarrow")},
        "training_data": {
            "inputs": inputs,
            "holdout_fraction": holdout_fraction,
            "holdout": groups.describe(),
            "documents": {"train": counts(training), "held_out": counts(held_out)}
            | ({"validation": counts(validation)} if validation is not None else {}),
            "text_bytes": int(pc.sum(pc.binary_length(texts)).as_py() or 0),
        },
        "parameters": parameters.model_dump(),
        "seed": run.seed,
        "failed_seeds": run.failed_seeds,
        "fasttext_arguments": run.arguments,
        "metrics": None if metrics is None else {key: value for key, value in metrics.items()
                                                 if key not in ("roc_curve", "score_histograms")},
    }
    (output / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def labelled_examples(positive: tuple[str, ...], positive_where: str | None, negative: tuple[str, ...],
                      negative_where: str | None, data: tuple[str, ...], data_where: str | None,
                      label_column: str | None, rules: str | None, text_column: str,
                      group_columns: tuple[str, ...] = ()) -> tuple[pa.Array, np.ndarray, list, bool, pa.Table]:
    """Texts, labels, provenance and the `group_columns` (for the held-out split) from either positive/negative
    inputs (binary) or labelled data (multi-class)."""
    binary = bool(positive or negative)
    if binary == bool(data):
        raise click.UsageError("give either --positive and --negative (binary) or --data (multi-class)")
    texts, labels, inputs, groups = [], [], [], []
    if binary:
        if not (positive and negative):
            raise click.UsageError("a binary classifier needs both --positive and --negative inputs")
        for role, paths, where in ((POSITIVE, positive, positive_where), (NEGATIVE, negative, negative_where)):
            for path in paths:
                table, record = read_documents(path, where, list(dict.fromkeys([text_column, *group_columns])), role)
                texts.append(table.column(text_column))
                groups.append(key_columns(table, group_columns))
                labels.append(np.full(table.num_rows, role, object))
                inputs.append(record)
    else:
        if (label_column is None) == (rules is None):
            raise click.UsageError("--data needs exactly one of --label-column and --rules")
        domain_rules = load_rules(rules) if rules else None
        columns = list(dict.fromkeys([text_column, label_column or "url", *group_columns]))
        for path in data:
            table, record = read_documents(path, data_where, columns, "data")
            if domain_rules:
                found = seed_labels(table.column(text_column), table.column("url"), domain_rules)
                record["rules"] = {"path": rules, "checksum": file_checksum(Path(rules))}
            else:
                table = table.filter(pc.is_valid(table.column(label_column)))
                found = table.column(label_column).cast(pa.string())
                record["rows_selected"] = table.num_rows
            found = np.asarray(found.to_pylist(), object)
            names, numbers = np.unique(found, return_counts=True)
            record["labels"] = {str(name): int(number) for name, number in zip(names, numbers)}
            texts.append(table.column(text_column))
            groups.append(key_columns(table, group_columns))
            labels.append(found)
            inputs.append(record)
    chunks = [chunk.cast(pa.string()) for column in texts for chunk in column.chunks]
    all_texts = pa.chunked_array(chunks, pa.string()).combine_chunks()
    group_table = pa.concat_tables(groups, promote_options="permissive") if group_columns else pa.table({})
    return all_texts, np.concatenate(labels), inputs, binary, group_table


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
