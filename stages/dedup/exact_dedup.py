"""`exact_dedup`: remove documents whose normalised text is identical, keeping one survivor per group.

The cheapest dedup of all (one 128-bit hash per document), so it runs before near-dedup and shrinks its work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from gristmill.pipeline.engine.files import as_location
from gristmill.pipeline.engine.stage import ReduceContext, StageConfig, register
from gristmill.stages.dedup.components import (
    SURVIVOR_PATTERN,
    RemovesClusterMembers,
    outputs_exist,
    partition_count,
    remove_non_survivors,
    summary_documents,
    survivor_priority,
    write_partitioned,
)
from gristmill.stages.dedup.minhash import Normalization
from pydantic import Field

CLUSTER_COLUMNS = ("group", "hash_high", "hash_low")


class ExactDedupConfig(StageConfig):
    lowercase: bool = Field(True, description="Lowercase before hashing.")
    nfkc: bool = Field(True, description="Apply Unicode NFKC before hashing.")
    strip_punctuation: bool = Field(False, description="Remove Unicode punctuation before hashing.")
    collapse_whitespace: bool = Field(True, description="Collapse whitespace runs and trim before hashing.")
    mode: Literal["global", "local"] = Field("global", description="Deduplicate across all sources, or within each source.")
    survivor: str = Field("smallest_id", pattern=SURVIVOR_PATTERN,
                          description="Which copy survives: highest:<column>, longest, earliest or smallest_id; ties go to the smallest id.")


def text_hashes(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """xxh3-128 of each text's UTF-8 bytes, as (high, low) uint64 halves."""
    digests = [xxhash.xxh3_128_intdigest(text.encode()) for text in texts.to_pylist()]
    high = np.fromiter((digest >> 64 for digest in digests), np.uint64, len(digests))
    low = np.fromiter((digest & 0xFFFFFFFFFFFFFFFF for digest in digests), np.uint64, len(digests))
    return high, low


@register
class ExactDedup(RemovesClusterMembers):
    """Remove documents whose normalised text equals an earlier-chosen survivor's."""

    name = "exact_dedup"
    removal_reason = "exact_duplicate"
    Config = ExactDedupConfig
    needs_global_view = True

    def summarize(self, batch: pa.RecordBatch) -> pa.Table:
        config = self.config
        normalization = Normalization(config.lowercase, config.nfkc, config.strip_punctuation,
                                      config.collapse_whitespace)
        high, low = text_hashes(normalization.apply(batch.column("text")))
        group = (pc.fill_null(batch.column("source"), "") if config.mode == "local"
                 else pa.nulls(batch.num_rows, pa.string()))
        return pa.table({
            "id": pc.cast(batch.column("id"), pa.string()),
            "priority": survivor_priority(batch, config.survivor),
            "group": pc.cast(group, pa.string()),
            "hash_high": high,
            "hash_low": low,
        })

    def reduce(self, context: ReduceContext) -> str:
        directory = context.work_dir / "exact_dedup"
        partitions = partition_count(len(context.summary_files))
        context.run(partition_by_hash, [HashTask(str(path), shard, str(directory / "members"), partitions)
                                        for shard, path in enumerate(context.summary_files) if path is not None])
        remove_non_survivors(directory / "members", CLUSTER_COLUMNS, directory, context.shard_names, partitions,
                             context.run)
        return str(directory)



@dataclass(frozen=True)
class HashTask:
    summary: str
    shard: int
    output: str
    partitions: int


def partition_by_hash(task: HashTask) -> None:
    """Send each document of one shard to the partition of its text hash, where its copies meet."""
    name = f"shard-{task.shard:05d}"
    if outputs_exist(as_location(task.output), name, task.partitions):
        return
    members = summary_documents(task.shard, task.summary, CLUSTER_COLUMNS)
    write_partitioned(members, (pl.col("hash_high") % task.partitions).cast(pl.Int64), as_location(task.output), name,
                      task.partitions)
