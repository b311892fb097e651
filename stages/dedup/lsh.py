"""LSH banding for MinHash: bands x rows from a Jaccard threshold, the S-curve, the band join's hash parts, and a plan.

Choosing bands and rows is the one decision that sets both recall and cost, so it is computed and printed, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gristmill.pipeline.engine.dataset import Dataset
from gristmill.stages.dedup.components import partition_count

# Assumptions behind the estimates, stated in the plan itself.
ID_BYTES = 32  # document ids are 128-bit hex digests
MEAN_SHINGLES = 200  # a ~1 KB web page has about 200 word 5-grams
SUMMARY_BATCH_ROWS = 16_384  # the runner hands stages batches of this many rows
# The band join's process grows by about 83 B per (hash, node) row it holds (docs/SCALE.md: 1.09 GiB at 10M rows,
# 8.04 GiB at 100M), above about 0.25 GiB for the process itself.
BAND_JOIN_ROW_BYTES = 83
BAND_JOIN_BASE_BYTES = 1 << 28
# One band-join task holds at most about this many rows (~1.6 GiB by the line above, within the stage's declared
# 2 GB): each band is split into ceil(documents / JOIN_ROWS_PER_TASK) hash parts.
JOIN_ROWS_PER_TASK = 1 << 24
# Near-dedup verifies candidates by exact Jaccard, so false positives cost little and recall comes first.
FALSE_POSITIVE_WEIGHT = 0.05
FALSE_NEGATIVE_WEIGHT = 0.95


@dataclass(frozen=True)
class Banding:
    bands: int
    rows: int

    def candidate_probability(self, similarity: float | np.ndarray) -> float | np.ndarray:
        """Probability that two documents with this Jaccard similarity share at least one band (the S-curve)."""
        return 1.0 - (1.0 - np.asarray(similarity, float) ** self.rows) ** self.bands


def choose_banding(
    threshold: float, num_perm: int, false_positive_weight: float = 0.5, false_negative_weight: float = 0.5
) -> Banding:
    """Bands and rows minimising the weighted false-positive and false-negative areas under the S-curve.

    The same search as `datasketch.lsh._optimal_param`; the integrals of these polynomials are exact
    with Gauss-Legendre quadrature of num_perm / 2 + 1 points, so the choice is the same.
    """
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)
    best, best_error = Banding(1, 1), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            curve = Banding(bands, rows).candidate_probability
            below = 0.5 * threshold * np.dot(weights, curve(0.5 * threshold * (nodes + 1)))
            above_points = threshold + 0.5 * (1 - threshold) * (nodes + 1)
            above = 0.5 * (1 - threshold) * np.dot(weights, 1 - curve(above_points))
            error = below * false_positive_weight + above * false_negative_weight
            if error < best_error:
                best, best_error = Banding(bands, rows), error
    return best


def band_join_parts(documents: int) -> int:
    """Hash parts per band, so that one band-join task holds at most JOIN_ROWS_PER_TASK rows.

    A function of the document count alone (never of the worker count), so a rerun splits the same way. Documents
    sharing a band hash share its part, so the buckets, and the edges, are those of one join over the whole band.
    """
    return max(1, -(-documents // JOIN_ROWS_PER_TASK))


@dataclass(frozen=True)
class DedupPlan:
    rows: int
    shards: int
    threshold: float
    num_perm: int
    banding: Banding
    verify: bool
    join_parts: int
    band_join_bytes: int
    signature_bytes: int
    band_bytes: int
    summary_bytes: int
    peak_worker_bytes: int

    def curve(self) -> list[tuple[float, float]]:
        similarities = np.round(np.arange(0.5, 1.0001, 0.05), 2)
        return [(float(s), float(self.banding.candidate_probability(s))) for s in similarities]


def plan_dedup(
    rows: int,
    shards: int,
    threshold: float,
    num_perm: int = 128,
    false_positive_weight: float = FALSE_POSITIVE_WEIGHT,
    false_negative_weight: float = FALSE_NEGATIVE_WEIGHT,
    verify: bool = True,
) -> DedupPlan:
    """Banding, storage and per-worker memory for near-deduplicating `rows` documents held in `shards` shards."""
    banding = choose_banding(threshold, num_perm, false_positive_weight, false_negative_weight)
    shingle_bytes = MEAN_SHINGLES * 4 if verify else 0
    summary_row = ID_BYTES + 8 + banding.bands * 8 + shingle_bytes
    # Signing a batch: shingle hashes (4 B), token hashes and their n-gram combination (8 B each).
    signing = SUMMARY_BATCH_ROWS * (MEAN_SHINGLES * 24 + num_perm * 4 + summary_row)
    # A band-join task holds one hash part of one band: at most JOIN_ROWS_PER_TASK (hash, node) rows.
    join_parts = band_join_parts(rows)
    band_join = BAND_JOIN_BASE_BYTES + -(-rows // join_parts) * BAND_JOIN_ROW_BYTES
    # Verification holds the shingle lists of one partition's candidate documents.
    partitions = partition_count(shards)
    verifying = (rows // partitions) * shingle_bytes * 2 if verify else 0
    return DedupPlan(
        rows=rows,
        shards=shards,
        threshold=threshold,
        num_perm=num_perm,
        banding=banding,
        verify=verify,
        join_parts=join_parts,
        band_join_bytes=band_join,
        signature_bytes=rows * num_perm * 4,
        band_bytes=rows * banding.bands * 16,
        summary_bytes=rows * summary_row,
        peak_worker_bytes=max(signing, band_join, verifying),
    )


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:,.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError("unreachable")


def format_dedup_plan(
    dataset: str | Path,
    threshold: float = 0.8,
    num_perm: int = 128,
    false_positive_weight: float = FALSE_POSITIVE_WEIGHT,
    false_negative_weight: float = FALSE_NEGATIVE_WEIGHT,
    verify: bool = True,
) -> str:
    """The text of `gristmill dedup-plan DATASET --threshold T`: banding, S-curve, storage and memory."""
    manifest = Dataset(dataset).manifest()
    plan = plan_dedup(manifest.rows, len(manifest.shards), threshold, num_perm,
                      false_positive_weight, false_negative_weight, verify)
    banding = plan.banding
    lines = [
        f"near-dedup plan for {dataset}: {plan.rows:,} documents in {plan.shards} shard(s)",
        f"threshold {threshold} with {num_perm} permutations "
        f"(weights: false positives {false_positive_weight}, false negatives {false_negative_weight})",
        f"bands {banding.bands} x rows {banding.rows} = {banding.bands * banding.rows} of {num_perm} values used",
        "",
        "Jaccard  P(candidate)",
        *(f"  {similarity:.2f}  {probability:.4f}" for similarity, probability in plan.curve()),
        "",
        f"signatures (if kept, {num_perm} x uint32)  {human_bytes(plan.signature_bytes)}",
        f"band files ({banding.bands} x (hash, node))   {human_bytes(plan.band_bytes)}",
        f"shard summaries{' with shingle hashes' if verify else ''}  {human_bytes(plan.summary_bytes)}",
        f"band join: {banding.bands} x {plan.join_parts} task(s), each one hash part of one band "
        f"(<= {JOIN_ROWS_PER_TASK:,} documents), {human_bytes(plan.band_join_bytes)} each",
        f"expected peak memory per worker  {human_bytes(plan.peak_worker_bytes)}",
        f"(assumes ~{MEAN_SHINGLES} shingles per document, two shingle lists per document of a partition in "
        f"verification, and the band join's measured {BAND_JOIN_ROW_BYTES} B per document)",
    ]
    return "\n".join(lines)
