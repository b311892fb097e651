"""`quality_score`: annotate every document with one score column per fastText classifier, in one pass.

Scores are written beside the text and selection happens later (`quality_filter`), so a threshold can change without rescoring.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gristmill.stages.quality.fasttext_model import FastTextClassifier, model_card, model_file
from gristmill.stages.quality.preprocess import tokenize
from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register


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
        model_file(path)
        return path

    @model_validator(mode="after")
    def label_is_known(self) -> ScoringModel:
        if self.label is None and (model_card(self.model) or {}).get("positive_label") is None:
            raise ValueError(f"{self.model} has no model card naming a positive label; set `label`")
        return self


class QualityScoreConfig(StageConfig):
    models: list[ScoringModel] = Field(
        min_length=1,
        description="Classifiers to apply, each {column, model, label}; on the command line COLUMN=MODEL.",
    )

    @field_validator("models")
    @classmethod
    def columns_differ(cls, models: list[ScoringModel]) -> list[ScoringModel]:
        columns = [scoring.column for scoring in models]
        if len(set(columns)) != len(columns):
            raise ValueError(f"score columns must differ, got {columns}")
        return models


@register
class QualityScore(MapStage):
    """Add one score column per fastText classifier (probability of its positive label); texts are tokenised once."""

    name = "quality_score"
    Config = QualityScoreConfig

    def setup(self) -> None:
        self.scorers: list[tuple[str, FastTextClassifier, int]] = []
        for scoring in self.config.models:
            classifier = FastTextClassifier.load(scoring.model)
            label = scoring.label or model_card(scoring.model)["positive_label"]
            if label not in classifier.labels:
                raise ValueError(f"{scoring.model}: label {label!r} is not one of {list(classifier.labels)}")
            self.scorers.append((scoring.column, classifier, classifier.labels.index(label)))

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        for scoring in self.config.models:
            if scoring.column in input_schema.names:
                raise ValueError(f"quality_score: column {scoring.column!r} already exists in the input")
            input_schema = input_schema.append(pa.field(scoring.column, pa.float32()))
        return input_schema

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        tokens = tokenize(batch.column("text"))
        empty = np.asarray(tokens.value_lengths().fill_null(0)) == 0
        for column, classifier, label_index in self.scorers:
            scores = classifier.predict(tokens)[:, label_index]
            batch = batch.append_column(column, pa.array(scores, pa.float32(), mask=empty | np.isnan(scores)))
        return BatchResult.keep_all(batch)
