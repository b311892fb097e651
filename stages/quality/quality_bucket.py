"""`quality_bucket`: a score column as integer levels 0..levels-1 by exact quantiles of the whole dataset.

A document's level is floor(levels × r / N), where r counts the dataset's scored documents with a strictly lower
score and N counts them all: a function of the score and the dataset alone, so no shard count, shard order or
executor can change it. Mixtures then select `quality_bucket >= 15` (Nemotron-CC's 20 levels) across sources.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from gristmill.pipeline.engine.dataset import write_json_atomic
from gristmill.pipeline.engine.stage import (
    BatchResult,
    MapStage,
    ReduceContext,
    StageConfig,
    register,
)
from gristmill.pipeline.engine.stage_report import (
    ReportedDataset,
    StageSection,
    bar_chart,
)
from gristmill.stages.quality.score_ranks import (
    high_half_counts,
    order_statistics,
    score_keys,
    score_of_key,
    scored_values,
)
from pydantic import Field

LEVEL_TYPE = pa.int16()
MAX_LEVELS = 1000
UNSCORED_STAT = "unscored"
EDGES_FILE = "edges.json"


# --- quality levels -----------------------------------------------------------------------------------------------


def level_edges(context: ReduceContext, column: str, levels: int) -> tuple[int, list[int]] | None:
    """(N, edge keys) such that a score's level is the number of edges strictly below its key; None when no
    summary holds a score. Edge j (1..levels-1) is the score at 0-based rank ceil(j·N/levels) - 1, which makes the
    level floor(levels · r / N) for r documents scoring strictly lower."""
    counts = high_half_counts(context, column)
    total = int(counts.sum())
    if total == 0:
        return None
    ranks = (np.arange(1, levels, dtype=np.int64) * total + levels - 1) // levels - 1
    return total, [int(key) for key in order_statistics(context, column, counts, ranks)]


def levels_of(scores: pa.Array | pa.ChunkedArray, edges: Sequence[int] | None) -> np.ndarray:
    """Each score's level as float64 (NaN where unscored, or everywhere when the dataset has no score)."""
    values = scored_values(scores)
    unscored = np.asarray(pc.is_null(values))
    if edges is None:
        return np.full(len(values), np.nan)
    keys = score_keys(pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False))
    levels = np.searchsorted(np.asarray(edges, np.uint32), keys, side="left").astype(np.float64)
    levels[unscored] = np.nan
    return levels


# --- the stage ---------------------------------------------------------------------------------------------------


class QualityBucketConfig(StageConfig):
    column: str = Field(description="Score column to bucket (written by quality_score, e.g. its ensemble).")
    levels: int = Field(20, ge=2, le=MAX_LEVELS, description="Number of levels; 20 as Nemotron-CC.")
    output_column: str = Field("quality_bucket", description="Name of the int16 level column to add.")


@register
class QualityBucket(MapStage):
    """Add an int16 level 0..levels-1 of a score by exact global quantiles (null where the score is null or NaN)."""

    name = "quality_bucket"
    Config = QualityBucketConfig
    needs_global_view = True

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        if self.config.column not in input_schema.names:
            raise ValueError(f"quality_bucket: no column {self.config.column!r} in the input")
        if self.config.output_column in input_schema.names:
            raise ValueError(f"quality_bucket: column {self.config.output_column!r} already exists in the input")
        return input_schema.append(pa.field(self.config.output_column, LEVEL_TYPE))

    def summarize(self, batch: pa.RecordBatch) -> pa.Table:
        return pa.table({"score": pc.drop_null(scored_values(batch.column(self.config.column)))})

    def reduce(self, context: ReduceContext) -> list[int] | None:
        """The levels-1 edge keys; also written to `_work/quality_bucket/edges.json` for the report."""
        found = level_edges(context, "score", self.config.levels)
        record = {"column": self.config.column, "output_column": self.config.output_column,
                  "levels": self.config.levels, "scored": found[0] if found else 0,
                  "edges": [score_of_key(key) for key in found[1]] if found else None}
        directory = context.work_dir / self.name
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / EDGES_FILE, json.dumps(record, indent=2))
        return found[1] if found else None

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        levels = levels_of(batch.column(self.config.column), getattr(self, "global_view", None))
        unscored = np.isnan(levels)
        column = pa.array(np.where(unscored, 0, levels).astype(np.int16), LEVEL_TYPE, mask=unscored)
        result = BatchResult.keep_all(batch.append_column(self.config.output_column, column))
        result.stats[UNSCORED_STAT] = int(unscored.sum())
        return result

    @classmethod
    def report_sections(cls, dataset: ReportedDataset) -> list[StageSection]:
        """Documents and tokens per level (tokens where the dataset has `num_tokens`: bucket after tokenize)."""
        edges_path = dataset.work_dir / cls.name / EDGES_FILE
        recorded: dict[str, Any] = dataset.read_json(edges_path) if edges_path.exists() else {}
        config = {**dataset.config, **recorded}
        output, levels = config.get("output_column", "quality_bucket"), int(config.get("levels", 20))
        if not dataset.has(output):
            return []
        has_tokens = dataset.has("num_tokens")
        documents = np.zeros(levels + 1, np.int64)  # the last slot counts unscored documents
        tokens = np.zeros(levels + 1, np.int64)
        for batch in dataset.batches([output, *(["num_tokens"] if has_tokens else [])]):
            slots = pc.fill_null(batch.column(0), levels).to_numpy().astype(np.int64)
            documents += np.bincount(slots, minlength=levels + 1)
            if has_tokens:
                weights = pc.fill_null(batch.column(1), 0).to_numpy().astype(np.int64)
                tokens += np.bincount(slots, weights=weights, minlength=levels + 1).astype(np.int64)
        edges = recorded.get("edges")
        statistics = {"column": config.get("column"), "output_column": output, "levels": levels,
                      "documents": documents[:levels].tolist(), "unscored_documents": int(documents[levels]),
                      "tokens": tokens[:levels].tolist() if has_tokens else None,
                      "unscored_tokens": int(tokens[levels]) if has_tokens else None, "edges": edges}
        section = StageSection(f"Quality buckets: {dataset.name}", statistics)
        scored = int(documents[:levels].sum())
        section.text(f"{scored:,} documents in {levels} levels of {config.get('column')!r} by global quantiles, "
                     f"{int(documents[levels]):,} unscored (null level)."
                     + ("" if has_tokens else " Tokens per level appear when the stage runs after tokenize."))
        rows = []
        for level in range(levels):
            row = {"level": level, "scores above": f"{edges[level - 1]:.6g}" if edges and level else "",
                   "documents": int(documents[level]),
                   "share": f"{documents[level] / scored:.2%}" if scored else ""}
            if has_tokens:
                row["tokens"] = int(tokens[level])
            rows.append(row)
        labels = [str(level) for level in range(levels)]
        series = {"documents": documents[:levels].tolist()}
        section.figure(lambda: bar_chart(labels, series, "documents"), f"Documents per quality level ({dataset.name})")
        return [section.table(rows)]
