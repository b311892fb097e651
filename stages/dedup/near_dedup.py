"""`near_dedup`: MinHash LSH near-duplicate removal, globally or within each source, keeping one document per cluster.

Signatures are bulk-computed per shard, bands are joined per band and hash range, and clusters come from task-based
connected components.

Reduce layout under `_work/near_dedup/`: `bands/band-B/part-H/shard-S.parquet` (band hash, node) from each shard
summary, in hash part H = hash % parts; `edges/part-P/band-B-part-H.parquet` (a, b) star edges of every bucket of
one band's hash part to the bucket's smallest node;
with `verify`, `verify/` and then `candidates/part-P.parquet` (a, b, jaccard) keep only pairs whose exact
Jaccard over shingle hashes reaches the threshold; then `components/`, `members/`, `chosen/`, and the
per-shard `removals/<shard>.parquet` that each process task reads, plus `cluster_sizes.json`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from gristmill.pipeline.engine.dataset import open_parquet, read_parquet_table
from gristmill.pipeline.engine.files import as_location
from gristmill.pipeline.engine.stage import (
    ReduceContext,
    Resources,
    StageConfig,
    register,
)
from gristmill.stages.dedup.components import (
    SURVIVOR_PATTERN,
    MembersTask,
    RemovesClusterMembers,
    connected_components,
    gather_members,
    node_keys,
    outputs_exist,
    partition_count,
    partition_files,
    partition_of,
    read_frames,
    remove_non_survivors,
    shards_of_partition,
    survivor_priority,
    write_parquet_atomic,
    write_partitioned,
)
from gristmill.stages.dedup.lsh import (
    FALSE_NEGATIVE_WEIGHT,
    FALSE_POSITIVE_WEIGHT,
    band_join_parts,
    choose_banding,
)
from gristmill.stages.dedup.minhash import (
    MinHasher,
    Normalization,
    Shingler,
    band_hashes,
    hash_strings,
)
from pydantic import Field

EDGES = {"a": pl.Int64, "b": pl.Int64}
FOOTER_READERS = 16  # summary footers read at once when counting documents (each is a request on a store)


class NearDedupConfig(StageConfig):
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity at or above which documents are near-duplicates.")
    num_perm: int = Field(128, ge=2, le=1024, description="MinHash permutations (signature length).")
    seed: int = Field(1, ge=0, description="Permutation seed, as datasketch's MinHash(seed=...).")
    shingle: Literal["word", "char"] = Field("word", description="Shingle word n-grams or character n-grams.")
    ngram: int = Field(5, ge=1, le=64, description="Tokens per shingle.")
    lowercase: bool = Field(True, description="Lowercase before shingling.")
    nfkc: bool = Field(True, description="Apply Unicode NFKC before shingling.")
    strip_punctuation: bool = Field(True, description="Remove Unicode punctuation before shingling.")
    collapse_whitespace: bool = Field(True, description="Collapse whitespace runs (matters for character shingles).")
    false_positive_weight: float = Field(FALSE_POSITIVE_WEIGHT, ge=0, le=1, description="Weight of false positives when choosing bands x rows.")
    false_negative_weight: float = Field(FALSE_NEGATIVE_WEIGHT, ge=0, le=1, description="Weight of false negatives when choosing bands x rows.")
    verify: bool = Field(True, description="Keep only candidate pairs whose exact Jaccard (over shingle hashes) reaches the threshold.")
    mode: Literal["global", "local"] = Field("global", description="Deduplicate across all sources, or within each source.")
    survivor: str = Field("smallest_id", pattern=SURVIVOR_PATTERN,
                          description="Which cluster member survives: highest:<column>, longest, earliest or smallest_id; ties go to the smallest id.")

    def shingler(self) -> Shingler:
        normalization = Normalization(self.lowercase, self.nfkc, self.strip_punctuation, self.collapse_whitespace)
        return Shingler(self.shingle, self.ngram, normalization)


def band_column(band: int) -> str:
    return f"band_{band:03d}"


@register
class NearDedup(RemovesClusterMembers):
    """Remove near-duplicate documents (MinHash LSH), keeping one survivor per cluster."""

    name = "near_dedup"
    removal_reason = "near_duplicate"
    Config = NearDedupConfig
    needs_global_view = True
    resources = Resources(cpus=1, memory_gb=2)

    def setup(self) -> None:
        config = self.config
        self.banding = choose_banding(config.threshold, config.num_perm, config.false_positive_weight,
                                      config.false_negative_weight)
        self.shingler = config.shingler()
        self.hasher = MinHasher(config.num_perm, config.seed)

    def summarize(self, batch: pa.RecordBatch) -> pa.Table:
        """Per document: id, survivor priority, one hash per band (null without shingles) and, to verify, shingle hashes."""
        shingle_hashes, offsets = self.shingler.hashes(batch.column("text"))
        signatures = self.hasher.signatures(shingle_hashes, offsets)
        salt = None
        if self.config.mode == "local":
            sources = pc.dictionary_encode(pc.fill_null(batch.column("source"), ""))
            salt = hash_strings(sources.dictionary.to_pylist())[sources.indices.to_numpy(zero_copy_only=False)]
        bands = band_hashes(signatures, self.banding.bands, self.banding.rows, salt)
        no_shingles = pa.array(np.diff(offsets) == 0)
        columns = {
            "id": pc.cast(batch.column("id"), pa.string()),
            "priority": survivor_priority(batch, self.config.survivor),
            **{band_column(band): pc.if_else(no_shingles, pa.scalar(None, pa.uint64()), pa.array(bands[:, band]))
               for band in range(self.banding.bands)},
        }
        if self.config.verify:
            columns["shingles"] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(shingle_hashes))
        return pa.table(columns)

    def reduce(self, context: ReduceContext) -> str:
        config = self.config
        directory = context.work_dir / "near_dedup"
        summaries = tuple(None if path is None else str(path) for path in context.summary_files)
        partitions = partition_count(len(summaries))
        bands, parts = self.banding.bands, band_join_parts(summary_rows(summaries))
        context.run(write_band_files, [BandFilesTask(path, shard, bands, str(directory / "bands"), parts)
                                       for shard, path in enumerate(summaries) if path is not None])
        context.run(join_band, [BandJoinTask(str(directory / "bands" / f"band-{band:03d}"), str(directory / "edges"),
                                             band, partitions, part) for band in range(bands) for part in range(parts)])
        candidates = directory / "candidates"
        if config.verify:
            context.run(attach_first_shingles, [VerifyTask(str(directory / "edges"), summaries, str(directory / "verify"),
                                                           partition, partitions, config.threshold)
                                                for partition in range(partitions)])
            context.run(verify_pairs, [VerifyTask(str(directory / "verify"), summaries, str(candidates),
                                                  partition, partitions, config.threshold)
                                       for partition in range(partitions)])
        else:
            context.run(gather_candidates, [VerifyTask(str(directory / "edges"), summaries, str(candidates), partition,
                                                       partitions, config.threshold)
                                            for partition in range(partitions)])
        candidate_files = [str(candidates / f"part-{partition:05d}.parquet") for partition in range(partitions)]
        roots = connected_components(candidate_files, directory / "components", partitions, context.run)
        context.run(gather_members, [MembersTask(path, summaries, str(directory / "members"), partition, partitions)
                                     for partition, path in enumerate(roots)])
        remove_non_survivors(directory / "members", ("cluster",), directory, context.shard_names, partitions,
                             context.run)
        return str(directory)


def summary_rows(summary_files: tuple[str | None, ...]) -> int:
    """Documents over all summaries, from their Parquet footers."""
    def rows_of(path: str) -> int:
        with open_parquet(path) as parquet:
            return parquet.metadata.num_rows

    with ThreadPoolExecutor(FOOTER_READERS) as pool:
        return sum(pool.map(rows_of, [path for path in summary_files if path is not None]))


@dataclass(frozen=True)
class BandFilesTask:
    summary: str
    shard: int
    bands: int
    output: str
    parts: int = 1  # hash parts per band (`band_join_parts`)


def write_band_files(task: BandFilesTask) -> None:
    """Split one shard's band hashes into (hash, node) files, one per band and hash part (`hash % parts`)."""
    band_dirs = [as_location(task.output) / f"band-{band:03d}" for band in range(task.bands)]
    name = f"shard-{task.shard:05d}"
    if all(outputs_exist(band_dir, name, task.parts) for band_dir in band_dirs):
        return
    table = read_parquet_table(task.summary, columns=[band_column(band) for band in range(task.bands)])
    nodes = pl.Series("node", node_keys(task.shard, table.num_rows))
    for band, band_dir in enumerate(band_dirs):
        frame = pl.DataFrame({"hash": pl.from_arrow(table.column(band)), "node": nodes}).drop_nulls("hash")
        write_partitioned(frame, pl.col("hash") % task.parts, band_dir, name, task.parts)


@dataclass(frozen=True)
class BandJoinTask:
    band_dir: str
    output: str
    band: int
    partitions: int
    part: int = 0  # the hash part of the band this task joins


def join_band(task: BandJoinTask) -> None:
    """Documents sharing a band hash are candidates: link each bucket of this hash part to its smallest node.

    Every document with a given hash is in that hash's part, so the buckets are those of the whole band."""
    name = f"band-{task.band:03d}-part-{task.part:05d}"
    if outputs_exist(as_location(task.output), name, task.partitions):
        return
    rows = read_frames(partition_files(as_location(task.band_dir), task.part), {"hash": pl.UInt64, "node": pl.Int64})
    edges = (rows.with_columns(a=pl.col("node").min().over("hash")).filter(pl.col("node") != pl.col("a"))
             .select("a", b="node").sort("a", "b"))
    write_partitioned(edges, partition_of(pl.col("a"), task.partitions), as_location(task.output), name, task.partitions)


@dataclass(frozen=True)
class VerifyTask:
    inputs: str
    summary_files: tuple[str | None, ...]
    output: str
    partition: int
    partitions: int
    threshold: float


def gather_candidates(task: VerifyTask) -> None:
    """Without verification every distinct band edge is a candidate pair."""
    output = as_location(task.output) / f"part-{task.partition:05d}.parquet"
    if not output.exists():
        edges = read_frames(partition_files(as_location(task.inputs), task.partition), EDGES).unique().sort("a", "b")
        write_parquet_atomic(edges, output)


def shingles_of(task: VerifyTask, nodes: pl.Series, column: str) -> pl.DataFrame:
    """Shingle-hash lists of the given nodes, all of them in shards of this task's partition."""
    frames = []
    for shard, path in shards_of_partition(task.partition, list(task.summary_files), task.partitions):
        wanted = np.sort(nodes.filter(nodes // (1 << 32) == shard).unique().to_numpy())
        if len(wanted):
            lists = read_parquet_table(path, columns=["shingles"]).column("shingles").take(pa.array(wanted & 0xFFFFFFFF))
            frames.append(pl.DataFrame({column.removeprefix("shingles_"): wanted,
                                        column: pl.from_arrow(lists)}))
    key = column.removeprefix("shingles_")
    return pl.concat(frames) if frames else pl.DataFrame(schema={key: pl.Int64, column: pl.List(pl.UInt32)})


def attach_first_shingles(task: VerifyTask) -> None:
    """Verification, first half: distinct edges of this partition with their first node's shingles, sent to the second's."""
    name = f"from-{task.partition:05d}"
    if outputs_exist(as_location(task.output), name, task.partitions):
        return
    edges = read_frames(partition_files(as_location(task.inputs), task.partition), EDGES).unique().sort("a", "b")
    edges = edges.join(shingles_of(task, edges["a"], "shingles_a"), on="a")
    write_partitioned(edges, partition_of(pl.col("b"), task.partitions), as_location(task.output), name, task.partitions)


def verify_pairs(task: VerifyTask) -> None:
    """Verification, second half: exact Jaccard of each pair's shingle-hash sets; keep pairs at the threshold."""
    output = as_location(task.output) / f"part-{task.partition:05d}.parquet"
    if output.exists():
        return
    pairs = read_frames(partition_files(as_location(task.inputs), task.partition),
                        EDGES | {"shingles_a": pl.List(pl.UInt32)})
    pairs = pairs.join(shingles_of(task, pairs["b"], "shingles_b"), on="b")
    similarity = jaccard_of_lists(pairs["shingles_a"].to_arrow(), pairs["shingles_b"].to_arrow())
    kept = (pairs.select("a", "b").with_columns(jaccard=pl.Series(similarity, dtype=pl.Float64))
            .filter(pl.col("jaccard") >= task.threshold).sort("a", "b"))
    write_parquet_atomic(kept, output)


def jaccard_of_lists(first: pa.Array | pa.ChunkedArray, second: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Exact Jaccard similarity of each pair of shingle-hash lists, as sets."""
    first, second = (_list_array(column) for column in (first, second))
    first_offsets, first_values = first.offsets.to_numpy(), first.values.to_numpy()
    second_offsets, second_values = second.offsets.to_numpy(), second.values.to_numpy()
    similarity = np.empty(len(first))
    for index in range(len(first)):
        x = np.unique(first_values[first_offsets[index]:first_offsets[index + 1]])
        y = np.unique(second_values[second_offsets[index]:second_offsets[index + 1]])
        shared = len(np.intersect1d(x, y, assume_unique=True))
        union = len(x) + len(y) - shared
        similarity[index] = shared / union if union else 1.0
    return similarity


def _list_array(column: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = array.cast(pa.list_(pa.uint32()))
    # Offsets must start at zero for the slicing above.
    return pa.ListArray.from_arrays(pc.subtract(array.offsets, array.offsets[0]), array.flatten())
