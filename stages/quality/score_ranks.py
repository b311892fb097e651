"""Exact order statistics of a score over every shard, by radix selection on float bits, as reduce tasks.

Shared by quality_filter (the cutoff of a top fraction), quality_bucket (level edges) and quality_score (rank
calibration). Scores become uint32 keys that sort like the floats; a first pass counts keys per high 16 bits,
a second gathers the low 16 bits only inside the high halves that hold a wanted rank. Each task covers a group
of summary files and returns their sum, so what reaches the driver grows with shards / FILES_PER_TASK, not shards:
512 KiB of counters per task, about 180 MiB for 90,000 shards.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from gristmill.pipeline.engine.dataset import read_parquet_table
from gristmill.pipeline.engine.files import Location
from gristmill.pipeline.engine.stage import ReduceContext

HALF_BITS = 16
FILES_PER_TASK = 256


def sortable_keys(scores: np.ndarray) -> np.ndarray:
    """float32 scores as uint32 keys that sort like the floats (sign bit flipped, negatives inverted)."""
    bits = scores.astype(np.float32).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))


def score_of_key(key: int) -> float:
    bits = np.uint32(key & 0x7FFFFFFF) if key >> 31 else ~np.uint32(key)
    return float(np.array([bits], np.uint32).view(np.float32)[0])


def scored_values(scores: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Scores as float32 with NaN made null: the one meaning of "unscored" in the summaries and in every shard."""
    scores = pc.cast(scores, pa.float32())
    return pc.if_else(pc.is_nan(scores), pa.scalar(None, pa.float32()), scores)


def score_keys(scores: np.ndarray) -> np.ndarray:
    """Sortable uint32 keys of float32 scores, -0.0 made 0.0 first, so that equal floats get equal keys."""
    return sortable_keys(scores.astype(np.float32) + np.float32(0.0))


def summary_column_keys(path: Location, column: str) -> np.ndarray:
    """The sortable uint32 keys of one summary file's non-null scores in `column`."""
    scores = pc.drop_null(scored_values(read_parquet_table(path, columns=[column]).column(column)))
    return score_keys(scores.to_numpy())


def count_high_halves(item: tuple[tuple[Location, ...], str]) -> np.ndarray:
    """Reduce task: how many keys of a group of summary files' column fall under each value of a key's high 16 bits."""
    paths, column = item
    counts = np.zeros(1 << HALF_BITS, np.int64)
    for path in paths:
        counts += np.bincount(summary_column_keys(path, column) >> HALF_BITS, minlength=1 << HALF_BITS)
    return counts


def low_halves_under(item: tuple[tuple[Location, ...], str, tuple[int, ...]]) -> list[np.ndarray]:
    """Reduce task: per high half asked for, the low 16 bits of a group of summary files' keys under it."""
    paths, column, highs = item
    keys = np.concatenate([summary_column_keys(path, column) for path in paths])
    wanted = np.array(highs, np.uint32)
    chosen = np.sort(keys[np.isin(keys >> HALF_BITS, wanted)])
    high_of_chosen = chosen >> HALF_BITS
    starts = np.searchsorted(high_of_chosen, wanted, side="left")
    ends = np.searchsorted(high_of_chosen, wanted, side="right")
    return [(chosen[start:end] & 0xFFFF).astype(np.uint16) for start, end in zip(starts, ends)]


def file_groups(context: ReduceContext) -> list[tuple[Location, ...]]:
    files = [path for path in context.summary_files if path is not None]
    return [tuple(files[start:start + FILES_PER_TASK]) for start in range(0, len(files), FILES_PER_TASK)]


def high_half_counts(context: ReduceContext, column: str) -> np.ndarray:
    """Reduce, first pass: scores of `column` per high half of their keys, summed over every summary file."""
    counts = context.run(count_high_halves, [(group, column) for group in file_groups(context)])
    return np.sum(counts, axis=0) if counts else np.zeros(1 << HALF_BITS, np.int64)


def order_statistics(context: ReduceContext, column: str, counts: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The keys of the scores at the given 0-based ranks (ascending order) over every summary file, exactly.

    Given the counts per high half, gather the low halves only inside the high halves that hold a rank asked for
    (2 bytes per gathered score)."""
    cumulative = np.cumsum(counts)
    high_of_rank = np.searchsorted(cumulative, ranks, side="right")
    below = np.where(high_of_rank > 0, cumulative[np.maximum(high_of_rank - 1, 0)], 0)
    highs = tuple(int(high) for high in np.unique(high_of_rank))
    per_group = context.run(low_halves_under, [(group, column, highs) for group in file_groups(context)])
    keys = np.empty(len(ranks), np.uint32)
    for position, high in enumerate(highs):
        lows = np.sort(np.concatenate([lows_of_group[position] for lows_of_group in per_group]))
        for index in np.flatnonzero(high_of_rank == high):
            keys[index] = (high << HALF_BITS) | int(lows[ranks[index] - below[index]])
    return keys
