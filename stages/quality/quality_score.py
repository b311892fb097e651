"""`quality_score`: annotate every document with one score column per classifier (fastText or embedding head), in
one pass, and optionally an ensemble column: the max or mean of the models' scores calibrated to dataset ranks.

Scores are written beside the text and selection happens later (`quality_filter`, `quality_bucket`), so a threshold
can change without rescoring.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from gristmill.pipeline.engine.dataset import read_parquet_table
from gristmill.pipeline.engine.files import as_location
from gristmill.pipeline.engine.stage import (
    BatchResult,
    MapStage,
    ReduceContext,
    StageConfig,
    register,
)
from gristmill.pipeline.engine.stage_report import ReportedDataset, StageSection
from gristmill.stages.quality.fasttext_model import (
    FastTextClassifier,
    model_card,
    model_file,
)
from gristmill.stages.quality.preprocess import tokenize
from gristmill.stages.quality.quality_bucket import level_edges, levels_of
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MANIFEST_FILE = "gristmill_classifier.json"
EMBEDDING_MODULE = "gristmill.stages.quality.embedding_model"
CLASSIFIER_KINDS = ("fasttext", "embedding")
# Rank calibration: a score becomes floor(RANK_LEVELS × share of the dataset's scores strictly below it) / RANK_LEVELS.
RANK_LEVELS = 1000


def classifier_kind(path: str | Path) -> str:
    """The kind a classifier directory's manifest names; fastText where there is no manifest (a bare model file,
    or a directory from before manifests)."""
    manifest = Path(path) / MANIFEST_FILE
    if not manifest.is_file():
        return "fasttext"
    try:
        kind = json.loads(manifest.read_text()).get("kind")
    except (ValueError, AttributeError):
        raise ValueError(f"{manifest}: not a JSON object with a `kind`") from None
    if kind not in CLASSIFIER_KINDS:
        raise ValueError(f"{manifest}: kind {kind!r} is not one of {', '.join(CLASSIFIER_KINDS)}")
    if kind == "fasttext" and json.loads(manifest.read_text()).get("score") == "grade":
        return "grade"  # a per-grade fastText model: its score is the expected grade, not one label's probability
    return kind


def embedding_module_available() -> bool:
    return EMBEDDING_MODULE in sys.modules or importlib.util.find_spec(EMBEDDING_MODULE) is not None


def load_embedding_classifier(path: str) -> Any:
    """Imported only when an embedding classifier is used, so fastText-only runs never load its dependencies."""
    return importlib.import_module(EMBEDDING_MODULE).load_embedding_classifier(path)


def load_grade_classifier(path: str) -> Any:
    """A per-grade fastText model scored as its expected grade, by the module that reads classifier manifests."""
    return importlib.import_module(EMBEDDING_MODULE).load_grade_classifier(path)


class ScoringModel(BaseModel):
    """One classifier and the column its score goes to."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str = Field(description="Name of the float32 score column to add.")
    model: str = Field(description="Classifier directory (from `gristmill classifier train`) or fastText model file.")
    label: str | None = Field(
        None, description="Label whose probability is the score; default: the model card's positive label."
    )

    @model_validator(mode="before")
    @classmethod
    def from_command_line(cls, value: Any) -> Any:
        """Accept `COLUMN=MODEL` strings, the form the generated command line passes."""
        if isinstance(value, str):
            column, separator, model = value.partition("=")
            if not separator or not column or not model:
                raise ValueError(f"expected COLUMN=MODEL, got {value!r}")
            return {"column": column.strip(), "model": model.strip()}
        return value

    @field_validator("model")
    @classmethod
    def model_exists(cls, path: str) -> str:
        if classifier_kind(path) == "fasttext":
            model_file(path)
        elif not embedding_module_available():
            raise ValueError(f"{path} is an embedding classifier, and {EMBEDDING_MODULE} is not installed")
        return path

    @property
    def kind(self) -> str:
        return classifier_kind(self.model)

    @model_validator(mode="after")
    def label_is_known(self) -> ScoringModel:
        if self.kind in ("embedding", "grade"):
            if self.label is not None:
                raise ValueError(f"{self.model}: an {self.kind} classifier gives one score; leave `label` out")
        elif self.label is None and (model_card(self.model) or {}).get("positive_label") is None:
            raise ValueError(f"{self.model} has no model card naming a positive label; set `label`")
        return self


class Ensemble(BaseModel):
    """One more column combining every model's score."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str = Field("quality_ensemble", description="Name of the float32 ensemble column.")
    method: Literal["max", "mean"] = Field("max", description="How calibrated scores combine.")
    calibrate: Literal["rank", "none"] = Field(
        "rank", description="rank: each score becomes its share of the dataset's scores strictly below it (needs a "
        "global view); none: raw scores, only meaningful for models on one scale.")

    @model_validator(mode="before")
    @classmethod
    def from_command_line(cls, value: Any) -> Any:
        """Accept a JSON object or the method alone (`--ensemble max`), the forms the command line passes."""
        if isinstance(value, str):
            return json.loads(value) if value.lstrip().startswith("{") else {"method": value}
        return value


class QualityScoreConfig(StageConfig):
    models: list[ScoringModel] = Field(
        min_length=1,
        description="Classifiers to apply, each {column, model, label}; on the command line COLUMN=MODEL.",
    )
    ensemble: Ensemble | None = Field(
        None, description="Also write {column, method: max|mean, calibrate: rank|none} over every model's score.")

    @model_validator(mode="after")
    def columns_differ(self) -> QualityScoreConfig:
        columns = [scoring.column for scoring in self.models] + ([self.ensemble.column] if self.ensemble else [])
        if len(set(columns)) != len(columns):
            raise ValueError(f"score columns must differ, got {columns}")
        return self


METRICS_FILE = "metrics.json"  # written by `gristmill classifier train` under the model's evaluation/


@register
class QualityScore(MapStage):
    """Add one score column per classifier (fastText: probability of its positive label; embedding: its head's
    score), and optionally an ensemble of them; texts are tokenised once."""

    name = "quality_score"
    Config = QualityScoreConfig

    @classmethod
    def report_sections(cls, dataset: ReportedDataset) -> list[StageSection]:
        """Each classifier's held-out metrics, as `classifier train` measured them (its evaluation/metrics.json), so
        a run's scores are read beside how well the model that made them did on documents it never saw."""
        shown = ("documents", "threshold", "accuracy", "precision", "recall", "f1", "roc_auc", "spearman",
                 "mean_absolute_error", "grade_accuracy")
        section = StageSection(f"Quality classifiers: {dataset.name}", {"models": []})
        for entry in dataset.config.get("models", []):
            model = Path(entry["model"])
            metrics_path = (model if model.is_dir() else model.parent) / "evaluation" / METRICS_FILE
            if not metrics_path.exists():
                section.text(f"{entry['column']}: no held-out metrics at {metrics_path}.")
                continue
            metrics = dataset.read_json(metrics_path)
            section.statistics["models"].append({"column": entry["column"], "model": str(model), "metrics": metrics})
            section.text(f"{entry['column']} ({model.name}): held-out metrics from training.")
            section.table([{"measure": key, "value": metrics[key]} for key in shown if metrics.get(key) is not None])
            if confusion := metrics.get("grade_confusion_matrix") or metrics.get("confusion_matrix"):
                section.table([{"true \\ predicted": label, **dict(zip(confusion["labels"], row))}
                               for label, row in zip(confusion["labels"], confusion["matrix"])])
        return [section] if section.blocks else []

    @classmethod
    def needs_global_view_for(cls, config: QualityScoreConfig) -> bool:
        return config.ensemble is not None and config.ensemble.calibrate == "rank"

    def setup(self) -> None:
        self.scorers: list[tuple[str, str, Any, int]] = []  # column, kind, model, label index (fastText)
        for scoring in self.config.models:
            if scoring.kind in ("embedding", "grade"):
                load = load_embedding_classifier if scoring.kind == "embedding" else load_grade_classifier
                self.scorers.append((scoring.column, scoring.kind, load(scoring.model), 0))
                continue
            classifier = FastTextClassifier.load(scoring.model)
            label = scoring.label or model_card(scoring.model)["positive_label"]
            if label not in classifier.labels:
                raise ValueError(f"{scoring.model}: label {label!r} is not one of {list(classifier.labels)}")
            self.scorers.append((scoring.column, "fasttext", classifier, classifier.labels.index(label)))

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        columns = [scoring.column for scoring in self.config.models]
        for column in columns + ([self.config.ensemble.column] if self.config.ensemble else []):
            if column in input_schema.names:
                raise ValueError(f"quality_score: column {column!r} already exists in the input")
            input_schema = input_schema.append(pa.field(column, pa.float32()))
        return input_schema

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """Every model's float32 scores; a text with no word (null, empty, blank) is null for every model."""
        tokens = tokenize(batch.column("text"))
        empty = np.asarray(tokens.value_lengths().fill_null(0)) == 0
        worded = np.flatnonzero(~empty)
        scores = {}
        for column, kind, model, label_index in self.scorers:
            if kind == "fasttext":
                values = model.predict(tokens)[:, label_index]
            else:
                texts = pc.take(batch.column("text"), pa.array(worded)).to_pylist()
                classifier_scores = np.asarray(model.score(texts), np.float32) if texts else np.empty(0, np.float32)
                if classifier_scores.shape != (len(texts),):
                    raise ValueError(f"{column}: the {kind} classifier returned {classifier_scores.shape} scores "
                                     f"for {len(texts)} texts")
                values = np.full(batch.num_rows, np.nan, np.float32)
                values[worded] = classifier_scores
            scores[column] = pa.array(values, pa.float32(), mask=empty | np.isnan(values))
        return scores

    def summarize(self, batch: pa.RecordBatch) -> pa.Table:
        """Ids and every model's scores, in row order: the reduce ranks them, and each shard then reads its own back
        instead of scoring twice."""
        return pa.table({"id": batch.column("id"), **self.score(batch)})

    def reduce(self, context: ReduceContext) -> dict[str, Any]:
        """Per model, the rank calibration's edges; and where each shard's summary (its scores, in row order) is: the
        summaries' folder and the shards that have none. The view travels with every task, so it must not grow with
        the shard count: a path per shard would send 90,000 paths with each of 90,000 tasks."""
        edges = {}
        for scoring in self.config.models:
            found = level_edges(context, scoring.column, RANK_LEVELS)
            edges[scoring.column] = found[1] if found else None
        written = [path for path in context.summary_files if path is not None]
        return {"edges": edges, "summaries": str(written[0].parent) if written else None,
                "without_summary": [name for name, path in zip(context.shard_names, context.summary_files)
                                    if path is None]}

    def bind(self, global_view: Any, shard_name: str) -> None:
        super().bind(global_view, shard_name)
        has_summary = global_view["summaries"] is not None and shard_name not in global_view["without_summary"]
        self.shard_scores = (read_parquet_table(as_location(global_view["summaries"]) / f"{shard_name}.parquet")
                             if has_summary else None)
        self.next_row = 0

    def summarized_scores(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """This batch's rows of the shard's summary (the runner reads a shard's batches in the same order twice)."""
        if self.shard_scores is None:
            return self.score(batch)
        rows = self.shard_scores.slice(self.next_row, batch.num_rows)
        self.next_row += batch.num_rows
        if not rows.column("id").combine_chunks().equals(batch.column("id")):
            raise RuntimeError(f"quality_score: shard {self.shard_name}: the summary's ids differ from the input's; "
                               "remove the dataset's _work/summaries and run again")
        return {scoring.column: rows.column(scoring.column).combine_chunks() for scoring in self.config.models}

    def combine(self, scores: dict[str, pa.Array]) -> pa.Array:
        """The ensemble: max or mean of the calibrated scores, null where any model has no score."""
        ensemble = self.config.ensemble
        if ensemble.calibrate == "rank":
            edges = self.global_view["edges"]
            calibrated = [levels_of(values, edges[column]) / RANK_LEVELS for column, values in scores.items()]
        else:
            calibrated = [values.to_numpy(zero_copy_only=False).astype(np.float64) for values in scores.values()]
        stacked = np.stack(calibrated)
        combined = (stacked.max(axis=0) if ensemble.method == "max" else stacked.mean(axis=0)).astype(np.float32)
        return pa.array(combined, pa.float32(), mask=np.isnan(combined))

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        scores = self.summarized_scores(batch) if self.needs_global_view_for(self.config) else self.score(batch)
        for column, values in scores.items():
            batch = batch.append_column(column, values)
        if self.config.ensemble is not None:
            batch = batch.append_column(self.config.ensemble.column, self.combine(scores))
        return BatchResult.keep_all(batch)
