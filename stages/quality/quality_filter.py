"""`quality_filter`: keep documents by a score column: above a threshold, the global top fraction, or Pareto sampling.

Top-fraction cutoffs are exact over every shard (a reduce step), and Pareto draws hash the document id, so the
same documents survive whatever the executor, worker count or shard order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import Field, model_validator

from gristmill.pipeline.engine.stage import BatchResult, MapStage, ReduceContext, StageConfig, register

SUMMARY_SCHEMA = pa.schema([pa.field("score", pa.float32())])
HALF_BITS = 16


class QualityFilterConfig(StageConfig):
    column: str = Field(description="Score column to select on (written by quality_score).")
    mode: Literal["threshold", "top_fraction", "pareto"] = Field(
        description="threshold: keep score >= threshold; top_fraction: keep the highest-scoring fraction of all "
        "shards; pareto: keep when pareto(alpha) > 1 - score (GPT-3, NeMo Curator)."
    )
    threshold: float | None = Field(None, description="Lowest score kept (mode threshold).")
    fraction: float | None = Field(None, gt=0, le=1, description="Share of scored documents kept (mode top_fraction); ties at the cutoff are kept.")
    alpha: float = Field(9.0, gt=0, description="Pareto shape (mode pareto); GPT-3 used 9, larger keeps fewer low scores.")
    seed: int = Field(0, description="Seed of the per-document Pareto draws (mode pareto).")

    @model_validator(mode="after")
    def mode_has_its_parameter(self) -> QualityFilterConfig:
        if (self.mode == "threshold") != (self.threshold is not None):
            raise ValueError("threshold is required with mode threshold, and only with it")
        if (self.mode == "top_fraction") != (self.fraction is not None):
            raise ValueError("fraction is required with mode top_fraction, and only with it")
        return self


def sortable_keys(scores: np.ndarray) -> np.ndarray:
    """float32 scores as uint32 keys that sort like the floats (sign bit flipped, negatives inverted)."""
    bits = scores.astype(np.float32).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))


def score_of_key(key: int) -> float:
    bits = np.uint32(key & 0x7FFFFFFF) if key >> 31 else ~np.uint32(key)
    return float(np.array([bits], np.uint32).view(np.float32)[0])


def summary_keys(path: Path) -> np.ndarray:
    return sortable_keys(pq.read_table(path, columns=["score"]).column("score").to_numpy())


def count_high_halves(path: Path) -> np.ndarray:
    """Reduce task: how many scores of one summary file fall under each value of a key's high 16 bits."""
    return np.bincount(summary_keys(path) >> HALF_BITS, minlength=1 << HALF_BITS)


def low_halves_under(item: tuple[Path, int]) -> np.ndarray:
    """Reduce task: the low 16 bits of the keys in one summary file whose high 16 bits equal `high`."""
    path, high = item
    keys = summary_keys(path)
    return (keys[(keys >> HALF_BITS) == high] & 0xFFFF).astype(np.uint32)


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
    needs_global_view = True  # only mode top_fraction uses it; the other modes summarise nothing

    def summarize(self, batch: pa.RecordBatch) -> pa.Table:
        if self.config.mode != "top_fraction":
            return SUMMARY_SCHEMA.empty_table()
        scores = pc.cast(batch.column(self.config.column), pa.float32())
        return pa.table({"score": pc.drop_null(pc.if_else(pc.is_nan(scores), None, scores))}, schema=SUMMARY_SCHEMA)

    def reduce(self, context: ReduceContext) -> float | None:
        """The exact score of the k-th best document over all shards, by radix selection on float bits.

        Two passes of tasks over the summary files: count keys per high half, then collect the low halves
        inside the one high half that holds rank k. Memory stays at 65,536 counters plus that one bucket.
        """
        if self.config.mode != "top_fraction":
            return None
        files = [path for path in context.summary_files if path is not None]
        counts = np.sum(context.run(count_high_halves, files), axis=0) if files else np.zeros(1, np.int64)
        total = int(counts.sum())
        if total == 0:
            return None
        keep = max(1, round(self.config.fraction * total))
        from_top = np.cumsum(counts[::-1])
        bucket = int(np.searchsorted(from_top, keep))
        high = len(counts) - 1 - bucket
        above = int(from_top[bucket - 1]) if bucket else 0
        lows = np.sort(np.concatenate(context.run(low_halves_under, [(path, high) for path in files])))[::-1]
        return score_of_key((high << HALF_BITS) | int(lows[keep - above - 1]))

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        config = self.config
        scores = pc.cast(batch.column(config.column), pa.float32())
        missing = pc.fill_null(pc.is_nan(scores), True)
        reasons = pc.if_else(missing, "missing_score", pa.nulls(batch.num_rows, pa.string()))
        details = pc.if_else(missing, f"{config.column} is null or NaN", pa.nulls(batch.num_rows, pa.string()))
        if config.mode == "threshold":
            failing, reason = pc.less(scores, config.threshold), "below_threshold"
            detail = _detail(config.column, scores, f" < {config.threshold}")
        elif config.mode == "top_fraction":
            cutoff = np.inf if self.global_view is None else self.global_view
            failing, reason = pc.less(scores, pa.scalar(cutoff, pa.float32())), "below_top_fraction"
            detail = _detail(config.column, scores, f" < {cutoff:.6g}, the cutoff of the top {config.fraction:.2%}")
        else:
            draws = np.power(1.0 - uniform_draws(batch.column("id"), config.seed), -1.0 / config.alpha) - 1.0
            values = scores.to_numpy(zero_copy_only=False).astype(np.float64)
            failing, reason = pa.array(~(draws > 1.0 - values)), "pareto_not_sampled"
            detail = pc.binary_join_element_wise(
                _detail(config.column, scores, ", pareto draw "), pc.cast(pc.round(pa.array(draws), 4), pa.string()),
                f" <= 1 - {config.column}", "")
        failing = pc.and_(pc.fill_null(failing, False), pc.invert(missing))
        reasons = pc.if_else(failing, reason, reasons)
        details = pc.if_else(failing, detail, details)
        return BatchResult.split(batch, reasons, details)
