"""Train and evaluate fastText classifiers on labelled documents, writing model, model card and evaluation.

The card records data hashes and sizes, parameters, seeds and held-out metrics, so any score in a dataset can be
traced to what made it. `gristmill classifier train|eval` (pipeline/cli/classifier.py) parse options and call this.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from gristmill.classifiers.documents import read_documents
from gristmill.classifiers.domain import load_rules, seed_labels
from gristmill.classifiers.evaluate import binary_metrics, multiclass_metrics, write_evaluation
from gristmill.classifiers.holdout import VALIDATION_SEED, HoldoutGroups, holdout_groups, holdout_mask, key_columns
from gristmill.pipeline.engine.dataset import file_checksum
from gristmill.stages.quality.embedding_model import MANIFEST_FILE, MANIFEST_FORMAT, PROBABILITY
from gristmill.stages.quality.fasttext_model import (
    CARD_FILE,
    MODEL_FILE,
    FastTextClassifier,
    TrainingParameters,
    train_fasttext,
)
from gristmill.stages.quality.preprocess import PREPROCESSING, tokenize

POSITIVE, NEGATIVE = "positive", "negative"
EVALUATION_DIR = "evaluation"


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


def write_manifest(output: Path, manifest: dict[str, Any]) -> None:
    """`gristmill_classifier.json`: what kind of classifier a directory holds and what its score means."""
    (output / MANIFEST_FILE).write_text(json.dumps({"format": MANIFEST_FORMAT, **manifest}, indent=2) + "\n")


def train_classifier(texts: pa.Array, labels: np.ndarray, parameters: TrainingParameters, output: Path,
                     inputs: list[dict[str, Any]], holdout_fraction: float, binary: bool,
                     groups: HoldoutGroups | None = None, evaluate: bool = True) -> dict[str, Any]:
    """Split by group (default: by text), train (with NaN retries), evaluate on the held-out split (unless the
    caller evaluates itself) and write model, card, manifest and report."""
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
    if held_out.any() and evaluate:
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
    write_manifest(output, {"kind": "fasttext", "model_file": MODEL_FILE, "card": CARD_FILE,
                            "score": PROBABILITY if binary else "label_probabilities",
                            "positive_label": card["positive_label"], "labels": card["labels"]})
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
    """Texts, labels, provenance and the `group_columns` (for the held-out split) from either positive and negative
    inputs (binary) or `data` labelled by exactly one of `label_column` and `rules` (multi-class).

    The caller has checked that one of the two kinds is given, complete (the command line does, naming its flags).
    """
    binary = bool(positive or negative)
    texts, labels, inputs, groups = [], [], [], []
    if binary:
        for role, paths, where in ((POSITIVE, positive, positive_where), (NEGATIVE, negative, negative_where)):
            for path in paths:
                table, record = read_documents(path, where, list(dict.fromkeys([text_column, *group_columns])), role)
                texts.append(table.column(text_column))
                groups.append(key_columns(table, group_columns))
                labels.append(np.full(table.num_rows, role, object))
                inputs.append(record)
    else:
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
