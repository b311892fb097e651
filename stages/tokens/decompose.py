"""`decompose`: cut tokenized documents into training sequences (Dataset Decomposition, or a baseline).

Dataset Decomposition (Pouransari et al. 2024) puts each piece of 2^k + 1 tokens of one
document in bucket D_k, so no sequence mixes documents; concat-and-chunk and best-fit packing
are the baselines it is compared with. Each output row is one piece of one document; `segment`
0 starts a training sequence, and further segments of a packed sequence follow it in order.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import Field, model_validator

from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register
from gristmill.pipeline.engine.stage_report import ReportedDataset, StageSection, bar_chart


DECOMPOSE_ONLY = ("min_bucket", "max_bucket", "long_documents", "remainders", "seed")
PACKING_ONLY = ("sequence_length",)


class DecomposeConfig(StageConfig):
    mode: Literal["decompose", "concat_chunk", "best_fit"] = Field(
        "decompose",
        description="decompose: one document per sequence, power-of-two buckets; concat_chunk: concatenate and "
        "cut at sequence_length; best_fit: best-fit-decreasing packing with document boundaries.",
    )
    min_bucket: int = Field(8, ge=0, le=24, description="k_min: the shortest sequences hold 2^k_min + 1 tokens.")
    max_bucket: int = Field(13, ge=0, le=24, description="k_max: the longest sequences hold 2^k_max + 1 tokens.")
    long_documents: Literal["max_bucket", "random"] = Field(
        "max_bucket",
        description="Documents longer than 2^k_max + 1 tokens: cut into 2^k_max pieces first (the paper), or into "
        "pieces of seeded random bucket k, drawn with probability proportional to 2^-k (the authors' code).",
    )
    remainders: Literal["drop", "pack"] = Field(
        "drop",
        description="Pieces shorter than 2^k_min + 1 tokens: drop and count them, or best-fit pack them into "
        "bucket k_min sequences with document boundaries.",
    )
    sequence_length: int = Field(
        2048, ge=1, description="concat_chunk and best_fit: input tokens per sequence, a power of two (each sequence "
        "holds one token more, for the target shift)."
    )
    seed: int = Field(0, ge=0, description="Seed of the random long-document cuts.")
    keep_columns: list[str] = Field(
        ["source"], description="Document columns copied onto each of its pieces, for mixtures to select by."
    )

    @model_validator(mode="after")
    def consistent(self) -> DecomposeConfig:
        if self.mode == "decompose":
            self.refuse_unused(PACKING_ONLY, "applies to modes concat_chunk and best_fit, not decompose")
        else:
            self.refuse_unused(DECOMPOSE_ONLY, f"applies to mode decompose, not {self.mode}")
        if self.max_bucket < self.min_bucket:
            raise ValueError("max_bucket must be at least min_bucket")
        if self.sequence_length & (self.sequence_length - 1):
            raise ValueError("sequence_length must be a power of two")
        if reserved := set(self.keep_columns) & set(PIECE_SCHEMA.names):
            raise ValueError(f"keep_columns may not name output columns: {', '.join(sorted(reserved))}")
        return self


PIECE_SCHEMA = pa.schema([
    pa.field("document_id", pa.string()),
    pa.field("chunk_index", pa.int32()),
    pa.field("token_start", pa.int32()),
    pa.field("segment", pa.int32()),
    pa.field("bucket", pa.int8()),
    pa.field("num_tokens", pa.int32()),
    pa.field("dropped_tokens", pa.int32()),
    pa.field("tokens", pa.list_(pa.uint32())),
])


PIECE_FIELDS = ("document", "start", "length", "bucket", "segment")
SHORT_REASON = "shorter_than_min_bucket"
SHORT_DETAIL = "num_tokens={} < {}"  # the ledger detail of a short document; its report section reads the count back
SHORT_DETAIL_TOKENS = r"^num_tokens=(?P<tokens>\d+) "


@dataclass
class Pieces:
    """Pieces of a batch's documents in output order: one row each, grouped into training sequences."""

    document: np.ndarray  # row of the document in the batch
    start: np.ndarray  # first token, as an offset within the document
    length: np.ndarray
    bucket: np.ndarray
    segment: np.ndarray  # position in its training sequence; 0 starts a new one

    @staticmethod
    def concat(parts: list[Pieces]) -> Pieces:
        return Pieces(*(np.concatenate([getattr(part, name) for part in parts]) for name in PIECE_FIELDS))

    def take(self, order: np.ndarray) -> Pieces:
        return Pieces(*(getattr(self, name)[order] for name in PIECE_FIELDS))


def within_group_rank(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2... within each run of equal consecutive values."""
    if len(groups) == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    run_lengths = np.diff(np.r_[starts, len(groups)])
    return np.arange(len(groups)) - np.repeat(starts, run_lengths)


def binary_pieces(lengths: np.ndarray, consumed: np.ndarray, min_bucket: int, max_bucket: int) -> tuple[Pieces, np.ndarray]:
    """Cut each document's tokens from `consumed` on into 2^max + 1 pieces, then one piece per bucket, largest first.

    Returns the pieces (single-segment sequences) and each document's remainder, shorter than 2^min + 1.
    """
    full = (1 << max_bucket) + 1
    rest = lengths - consumed
    repeats = rest // full
    documents = [np.repeat(np.arange(len(lengths)), repeats)]
    starts = [consumed[documents[0]] + within_group_rank(documents[0]) * full]
    sizes = [np.full(len(documents[0]), max_bucket)]
    rest = rest - repeats * full
    for bucket in range(max_bucket - 1, min_bucket - 1, -1):
        size = (1 << bucket) + 1
        take = np.flatnonzero(rest >= size)
        documents.append(take)
        starts.append(lengths[take] - rest[take])
        sizes.append(np.full(len(take), bucket))
        rest[take] -= size
    document, start, bucket = np.concatenate(documents), np.concatenate(starts), np.concatenate(sizes)
    return Pieces(document, start, (1 << bucket) + 1, bucket, np.zeros(len(document), np.int64)), rest


def random_long_pieces(ids: list[str], lengths: np.ndarray, config: DecomposeConfig) -> tuple[Pieces, np.ndarray]:
    """Seeded random cuts of documents too long for the largest bucket, until what is left fits the binary rule.

    Each cut's bucket k is drawn with probability proportional to 2^-k, so the buckets get equal
    expected tokens; the random stream is keyed by seed and document id, hence executor-independent.
    """
    consumed = np.zeros(len(lengths), np.int64)
    buckets = np.arange(config.min_bucket, config.max_bucket + 1)
    probabilities = 2.0 ** -buckets / np.sum(2.0 ** -buckets)
    limit = (1 << (config.max_bucket + 1)) + 1
    parts: list[tuple[int, int, int]] = []
    for row in np.flatnonzero(lengths >= limit).tolist():
        rng = np.random.default_rng([config.seed, xxhash.xxh3_64_intdigest(ids[row].encode())])
        position, length = 0, int(lengths[row])
        while length - position >= limit:
            bucket = int(rng.choice(buckets, p=probabilities))
            parts.append((row, position, bucket))
            position += (1 << bucket) + 1
        consumed[row] = position
    document, start, bucket = (np.array(column, np.int64) for column in zip(*parts)) if parts else (np.zeros(0, np.int64),) * 3
    return Pieces(document, start, (1 << bucket) + 1, bucket, np.zeros(len(document), np.int64)), consumed


def best_fit_decreasing(sizes: np.ndarray, capacity: int) -> np.ndarray:
    """Bin of each item: largest first, each into the fullest open bin it fits (ties: the oldest bin)."""
    bins = np.empty(len(sizes), np.int64)
    open_bins: list[tuple[int, int]] = []  # (free space, bin), sorted
    opened = 0
    for item in np.argsort(-sizes, kind="stable").tolist():
        size = int(sizes[item])
        position = bisect_left(open_bins, (size, -1))
        if position == len(open_bins):
            chosen, free = opened, capacity - size
            opened += 1
        else:
            free, chosen = open_bins.pop(position)
            free -= size
        bins[item] = chosen
        if free > 0:
            insort(open_bins, (free, chosen))
    return bins


def packed(document: np.ndarray, start: np.ndarray, length: np.ndarray, capacity: int, bucket: int) -> Pieces:
    """Best-fit-decreasing pieces into sequences of `capacity` tokens; segments in packing order."""
    bins = best_fit_decreasing(length, capacity)
    packing_rank = np.empty(len(length), np.int64)
    packing_rank[np.argsort(-length, kind="stable")] = np.arange(len(length))
    order = np.lexsort((packing_rank, bins))
    return Pieces(document[order], start[order], length[order], np.full(len(order), bucket),
                  within_group_rank(bins[order]))


def concat_chunk_pieces(lengths: np.ndarray, capacity: int, bucket: int) -> Pieces:
    """Concatenate documents in order and cut every `capacity` tokens; the batch's last sequence may be short."""
    document_ends = np.cumsum(lengths)
    total = int(document_ends[-1]) if len(lengths) else 0
    cuts = np.union1d(document_ends - lengths, np.arange(0, total, capacity))
    cuts = cuts[cuts < total]
    piece_lengths = np.diff(np.r_[cuts, total])
    document = np.searchsorted(document_ends, cuts, side="right")
    sequence = cuts // capacity
    keep = piece_lengths > 0
    document, cuts, piece_lengths, sequence = document[keep], cuts[keep], piece_lengths[keep], sequence[keep]
    start = cuts - (document_ends[document] - lengths[document])
    return Pieces(document, start, piece_lengths, np.full(len(document), bucket), within_group_rank(sequence))


@register
class Decompose(MapStage):
    """Split token sequences into Dataset Decomposition buckets (or concat-and-chunk / best-fit baselines)."""

    name = "decompose"
    Config = DecomposeConfig
    rows_are_documents = False

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        missing = [name for name in ["id", "tokens", *self.config.keep_columns] if name not in input_schema.names]
        if missing:
            raise ValueError(f"decompose: input has no column {', '.join(map(repr, missing))} (tokenize first?)")
        kept = [input_schema.field(name) for name in self.config.keep_columns]
        return pa.schema([*PIECE_SCHEMA, *kept], metadata=input_schema.metadata)

    @classmethod
    def report_sections(cls, dataset: ReportedDataset) -> list[StageSection]:
        """Pieces, sequences and tokens per bucket, tokens per source, and the tokens dropped on the way."""
        tallies: dict[int, Counter[str]] = defaultdict(Counter)
        per_source: Counter[str] = Counter()
        remainder_tokens = 0
        columns = ["bucket", "num_tokens", "segment", "dropped_tokens"] + (["source"] if dataset.has("source") else [])
        for batch in dataset.batches(columns):
            table = pa.table({"bucket": batch.column("bucket"), "tokens": batch.column("num_tokens"),
                              "starts": pc.equal(batch.column("segment"), 0).cast(pa.int64())})
            grouped = table.group_by("bucket").aggregate([("tokens", "sum"), ("tokens", "count"), ("starts", "sum")])
            for bucket, tokens, pieces, starts in zip(*(grouped.column(name).to_pylist() for name in
                                                        ("bucket", "tokens_sum", "tokens_count", "starts_sum"))):
                tallies[int(bucket)].update({"tokens": tokens or 0, "pieces": pieces, "sequences": starts or 0})
            remainder_tokens += pc.sum(batch.column("dropped_tokens")).as_py() or 0
            if dataset.has("source"):
                by_source = pa.table({"source": pc.fill_null(batch.column("source"), "(none)"),
                                      "tokens": batch.column("num_tokens")}).group_by("source").aggregate(
                    [("tokens", "sum")])
                per_source.update(dict(zip(by_source.column("source").to_pylist(),
                                           by_source.column("tokens_sum").to_pylist())))
        short_tokens = 0
        if any(SHORT_REASON in record.rejected for record in dataset.records):
            for batch in dataset.ledger_batches(["reason", "detail"]):
                short = pc.fill_null(pc.equal(batch.column("reason"), SHORT_REASON), False)
                counts = pc.extract_regex(pc.filter(batch.column("detail"), short), SHORT_DETAIL_TOKENS)
                short_tokens += pc.sum(counts.field("tokens").cast(pa.int64())).as_py() or 0
        total = sum(tally["tokens"] for tally in tallies.values())
        buckets = [{"bucket": bucket, "capacity": (1 << bucket) + 1, "pieces": tallies[bucket]["pieces"],
                    "sequences": tallies[bucket]["sequences"], "tokens": tallies[bucket]["tokens"],
                    "share": tallies[bucket]["tokens"] / total if total else None} for bucket in sorted(tallies)]
        statistics = {"tokens": total, "buckets": {str(row["bucket"]): tallies[row["bucket"]] for row in buckets},
                      "tokens_per_source": dict(per_source.most_common()),
                      "dropped_tokens": {"remainders": remainder_tokens, "short_documents": short_tokens}}
        section = StageSection(f"Buckets: {dataset.name}", statistics)
        section.text(f"{total:,} tokens in bucket pieces; dropped {remainder_tokens:,} tokens of remainders and "
                     f"{short_tokens:,} in documents shorter than the smallest bucket.")
        section.table(buckets)
        if buckets:
            labels = [f"D{row['bucket']} (≤{row['capacity']})" for row in buckets]
            section.figure(lambda: bar_chart(labels, {"tokens": [row["tokens"] for row in buckets]}, "tokens"),
                           f"Tokens per bucket ({dataset.name})")
        if per_source:
            section.text("Tokens per source:")
            section.table([{"source": source, "tokens": tokens, "share": tokens / total if total else None}
                           for source, tokens in per_source.most_common()])
        return [section]

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        config = self.config
        tokens = batch.column("tokens")
        lengths = pc.fill_null(pc.list_value_length(tokens), 0).to_numpy().astype(np.int64)
        reasons = np.full(batch.num_rows, None, dtype=object)
        details = np.full(batch.num_rows, None, dtype=object)
        reasons[lengths == 0] = "no_tokens"
        shortest = (1 << config.min_bucket) + 1
        dropped = np.zeros(batch.num_rows, np.int64)
        if config.mode == "decompose":
            if config.remainders == "drop":
                short = (lengths > 0) & (lengths < shortest)
                reasons[short] = SHORT_REASON
                details[short] = [SHORT_DETAIL.format(length, shortest) for length in lengths[short].tolist()]
            pieces, dropped = self._decompose(batch, lengths, reasons == None)
        else:
            capacity = config.sequence_length + 1
            bucket = config.sequence_length.bit_length() - 1
            usable = np.where(reasons == None, lengths, 0)
            if config.mode == "concat_chunk":
                pieces = concat_chunk_pieces(usable, capacity, bucket)
            else:
                pieces = self._best_fit(usable, capacity, bucket)
        rejected = BatchResult.split(batch, pa.array(reasons, pa.string()), pa.array(details, pa.string())).rejected
        return BatchResult(self._rows(batch, tokens, lengths, pieces, dropped), rejected)

    def _decompose(self, batch: pa.RecordBatch, lengths: np.ndarray, usable: np.ndarray) -> tuple[Pieces, np.ndarray]:
        """Binary-decomposition pieces in document order, then any packed remainders; and what each document drops."""
        config = self.config
        usable_lengths = np.where(usable, lengths, 0)
        parts = []
        consumed = np.zeros(len(lengths), np.int64)
        if config.long_documents == "random":
            random_part, consumed = random_long_pieces(batch.column("id").to_pylist(), usable_lengths, config)
            parts.append(random_part)
        binary_part, remainder = binary_pieces(usable_lengths, consumed, config.min_bucket, config.max_bucket)
        parts.append(binary_part)
        singles = Pieces.concat(parts)
        singles = singles.take(np.lexsort((singles.start, singles.document)))
        if config.remainders == "drop":
            return singles, remainder
        has_rest = np.flatnonzero(remainder > 0)
        remainders = packed(has_rest, usable_lengths[has_rest] - remainder[has_rest], remainder[has_rest],
                            (1 << config.min_bucket) + 1, config.min_bucket)
        return Pieces.concat([singles, remainders]), np.zeros_like(remainder)

    def _best_fit(self, lengths: np.ndarray, capacity: int, bucket: int) -> Pieces:
        full_counts = lengths // capacity
        document = np.repeat(np.arange(len(lengths)), full_counts)
        whole = Pieces(document, within_group_rank(document) * capacity, np.full(len(document), capacity),
                       np.full(len(document), bucket), np.zeros(len(document), np.int64))
        rest = lengths - full_counts * capacity
        has_rest = np.flatnonzero(rest > 0)
        return Pieces.concat([whole, packed(has_rest, lengths[has_rest] - rest[has_rest], rest[has_rest], capacity, bucket)])

    def _rows(self, batch: pa.RecordBatch, tokens: pa.Array, lengths: np.ndarray, pieces: Pieces,
              dropped: np.ndarray) -> pa.Table:
        flat = pc.list_flatten(tokens).to_numpy(zero_copy_only=False)
        document_offsets = np.r_[0, np.cumsum(lengths)]
        out_offsets = np.r_[0, np.cumsum(pieces.length)]
        absolute = document_offsets[pieces.document] + pieces.start
        gather = np.repeat(absolute - out_offsets[:-1], pieces.length) + np.arange(int(out_offsets[-1]))
        chunk_index = self._chunk_index(pieces)
        columns = {
            "document_id": pc.take(batch.column("id"), pa.array(pieces.document)),
            "chunk_index": pa.array(chunk_index.astype(np.int32)),
            "token_start": pa.array(pieces.start.astype(np.int32)),
            "segment": pa.array(pieces.segment.astype(np.int32)),
            "bucket": pa.array(pieces.bucket.astype(np.int8)),
            "num_tokens": pa.array(pieces.length.astype(np.int32)),
            "dropped_tokens": pa.array(np.where(chunk_index == 0, dropped[pieces.document], 0).astype(np.int32)),
            "tokens": pa.ListArray.from_arrays(pa.array(out_offsets.astype(np.int32)), pa.array(flat[gather])),
        }
        for name in self.config.keep_columns:
            columns[name] = pc.take(batch.column(name), pa.array(pieces.document))
        return pa.table(columns)

    @staticmethod
    def _chunk_index(pieces: Pieces) -> np.ndarray:
        """Position of each piece within its document, by token offset."""
        order = np.lexsort((pieces.start, pieces.document))
        index = np.empty(len(order), np.int64)
        index[order] = within_group_rank(pieces.document[order])
        return index
