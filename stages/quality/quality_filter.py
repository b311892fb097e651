"""`quality_filter`: keep documents by a score column: above a threshold, the global top fraction, or Pareto sampling.

Top-fraction cutoffs are exact over every shard (a reduce step), and Pareto draws hash the document id, so the
same documents survive whatever the executor, worker count or shard order.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from gristmill.pipeline.engine.stage import (
    BatchResult,
    MapStage,
    ReduceContext,
    StageConfig,
    register,
    tagged_options,
)
from gristmill.stages.quality.score_ranks import (
    high_half_counts,
    order_statistics,
    score_of_key,
)
from pydantic import Field, model_validator

SUMMARY_SCHEMA = pa.schema([pa.field("score", pa.float32())])


class Threshold(StageConfig):
    """Keep documents whose score is at least `threshold`."""

    mode: Literal["threshold"]
    threshold: float = Field(description="Lowest score kept.")


class TopFraction(StageConfig):
    """Keep the highest-scoring `fraction` of all shards' documents: the only mode with a global view."""

    mode: Literal["top_fraction"]
    fraction: float = Field(gt=0, le=1, description="Share of scored documents kept; ties at the cutoff are kept.")


class Pareto(StageConfig):
    """Keep a document when a seeded pareto(alpha) draw exceeds 1 - score (GPT-3, NeMo Curator)."""

    mode: Literal["pareto"]
    alpha: float = Field(9.0, gt=0, description="Pareto shape; GPT-3 used 9, larger keeps fewer low scores.")
    seed: int = Field(0, description="Seed of the per-document draws.")


class QualityFilterConfig(StageConfig):
    column: str = Field(description="Score column to select on (written by quality_score).")
    keep: Annotated[Threshold | TopFraction | Pareto, Field(discriminator="mode")] = Field(
        description="Which documents to keep, with that mode's own parameters: {mode: threshold, threshold: 0.5}, "
        "{mode: top_fraction, fraction: 0.1} or {mode: pareto, alpha: 9, seed: 0}."
    )

    @model_validator(mode="before")
    @classmethod
    def parameters_inside_keep(cls, data: Any) -> Any:
        return tagged_options(cls, "keep", data)


def uniform_draws(ids: pa.Array, seed: int) -> np.ndarray:
    """One uniform number in [0, 1) per document id, the same on every machine and in every shard order."""
    prefix = f"{seed}\x1f".encode()
    hashes = np.fromiter((xxhash.xxh3_64_intdigest(prefix + doc_id.encode()) for doc_id in ids.to_pylist()),
                         np.uint64, len(ids))
    return (hashes >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _detail(column: str, scores: pa.Array, relation: str) -> pa.Array:
    return pc.binary_join_element_wise(f"{column}=", pc.cast(pc.round(scores, 4), pa.string()), relation, "")


@register
class QualityFilter(MapStage):
    """Keep documents by a score: threshold, global top fraction, or seeded Pareto sampling; unscored ones are rejected."""

    name = "quality_filter"
    Config = QualityFilterConfig

    @classmethod
    def needs_global_view_for(cls, config: QualityFilterConfig) -> bool:
        return isinstance(config.keep, TopFraction)

    def summarize(self, batch: pa.RecordBatch) -> pa.Table:
        scores = pc.cast(batch.column(self.config.column), pa.float32())
        return pa.table({"score": pc.drop_null(pc.if_else(pc.is_nan(scores), None, scores))}, schema=SUMMARY_SCHEMA)

    def reduce(self, context: ReduceContext) -> float | None:
        """The exact score of the k-th best document over all shards, by radix selection on float bits.

        Two passes of tasks over groups of summary files (score_ranks): count keys per high half, then collect the
        low halves inside the one high half that holds rank k. Memory stays at 65,536 counters plus that one bucket.
        """
        counts = high_half_counts(context, "score")
        total = int(counts.sum())
        if total == 0:
            return None
        rank_from_top = max(1, round(self.config.keep.fraction * total))
        key = order_statistics(context, "score", counts, np.array([total - rank_from_top], np.int64))[0]
        return score_of_key(int(key))

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        column, keep = self.config.column, self.config.keep
        scores = pc.cast(batch.column(column), pa.float32())
        missing = pc.fill_null(pc.is_nan(scores), True)
        reasons = pc.if_else(missing, "missing_score", pa.nulls(batch.num_rows, pa.string()))
        details = pc.if_else(missing, f"{column} is null or NaN", pa.nulls(batch.num_rows, pa.string()))
        if isinstance(keep, Threshold):
            failing, reason = pc.less(scores, keep.threshold), "below_threshold"
            detail = _detail(column, scores, f" < {keep.threshold}")
        elif isinstance(keep, TopFraction):
            cutoff = np.inf if self.global_view is None else self.global_view
            failing, reason = pc.less(scores, pa.scalar(cutoff, pa.float32())), "below_top_fraction"
            detail = _detail(column, scores, f" < {cutoff:.6g}, the cutoff of the top {keep.fraction:.2%}")
        else:
            draws = np.power(1.0 - uniform_draws(batch.column("id"), keep.seed), -1.0 / keep.alpha) - 1.0
            values = scores.to_numpy(zero_copy_only=False).astype(np.float64)
            failing, reason = pa.array(~(draws > 1.0 - values)), "pareto_not_sampled"
            detail = pc.binary_join_element_wise(
                _detail(column, scores, ", pareto draw "), pc.cast(pc.round(pa.array(draws), 4), pa.string()),
                f" <= 1 - {column}", "")
        failing = pc.and_(pc.fill_null(failing, False), pc.invert(missing))
        reasons = pc.if_else(failing, reason, reasons)
        details = pc.if_else(failing, detail, details)
        return BatchResult.split(batch, reasons, details)
