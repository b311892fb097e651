"""`domain_label`: annotate every document with its most likely domain (web, code, math, ...) and that label's probability.

Mixtures are declared over domains, so each document needs one; the multi-class fastText model comes from `gristmill classifier train --data ... --rules ...`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from gristmill.stages.quality.fasttext_model import FastTextClassifier, model_file
from gristmill.stages.quality.preprocess import tokenize
from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register

LABEL_COLUMN, SCORE_COLUMN = "domain_label", "domain_score"


class DomainLabelConfig(StageConfig):
    model: str = Field(description="Multi-class classifier directory (from `gristmill classifier train`) or fastText model file.")

    @field_validator("model")
    @classmethod
    def model_exists(cls, path: str) -> str:
        model_file(path)
        return path


@register
class DomainLabel(MapStage):
    """Add `domain_label` (most probable label) and `domain_score` (its probability); both null for empty texts."""

    name = "domain_label"
    Config = DomainLabelConfig

    def setup(self) -> None:
        self.classifier = FastTextClassifier.load(self.config.model)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        for name in (LABEL_COLUMN, SCORE_COLUMN):
            if name in input_schema.names:
                raise ValueError(f"domain_label: column {name!r} already exists in the input")
        return input_schema.append(pa.field(LABEL_COLUMN, pa.string())).append(pa.field(SCORE_COLUMN, pa.float32()))

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        tokens = tokenize(batch.column("text"))
        probabilities = self.classifier.predict(tokens)
        unlabelled = (np.asarray(tokens.value_lengths().fill_null(0)) == 0) | np.isnan(probabilities).any(axis=1)
        best = np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1)
        labels = pa.DictionaryArray.from_arrays(pa.array(best.astype(np.int32), mask=unlabelled), list(self.classifier.labels))
        scores = pa.array(probabilities[np.arange(len(best)), best], pa.float32(), mask=unlabelled)
        batch = batch.append_column(LABEL_COLUMN, labels.cast(pa.string())).append_column(SCORE_COLUMN, scores)
        return BatchResult.keep_all(batch)
