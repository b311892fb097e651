"""Training batches from memmapped token exports: Dataset Decomposition buckets, concat-and-chunk and best-fit packing.

Every batcher is a deterministic function of its plan and seed and saves its exact plan position, so a resumed run
reads the very batches an uninterrupted run would have read.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.pipeline.tokens.export import STATS_FILE
from gristmill.pipeline.tokens.indexed_dataset import IndexedDataset
from gristmill.pipeline.tokens.mixture import PLAN_HEADER
from gristmill.stages.tokens.tokenization import LoadedTokenizer, load_tokenizer

IGNORE = -100  # target value cross-entropy skips: padding and the first token of a document
CURRICULA = ("uniform", "grow_linear", "grow_p2")


def export_prefixes(path: str | Path) -> list[str]:
    """The indexed datasets at `path`: every bucket of an export directory (by its sidecars), or one prefix."""
    path = Path(path)
    if not path.is_dir():
        return [str(path)]
    sidecars = [item for item in sorted(path.glob("*.json")) if item.name != STATS_FILE and not item.name.startswith("_")]
    prefixes = [str(path / json.loads(item.read_text())["prefix"]) for item in sidecars]
    if not prefixes:
        raise ValueError(f"{path}: no exported buckets (no sidecar .json files)")
    return prefixes


def read_sidecar(prefix: str | Path) -> dict[str, Any] | None:
    sidecar = Path(f"{prefix}.json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else None


def document_lengths(dataset: IndexedDataset) -> np.ndarray:
    """Tokens per training sequence (Megatron document: one or more segments back to back)."""
    ends = np.concatenate([[0], np.cumsum(dataset.sequence_lengths, dtype=np.int64)])
    return ends[dataset.document_indices[1:]] - ends[dataset.document_indices[:-1]]


@dataclass
class Plan:
    """The order in which training sequences are read: entry i is document `sequence[i]` of file `file[i]`,
    counted towards mixture component `component[i]`."""

    names: list[str]
    files: list[IndexedDataset]
    component: np.ndarray
    file: np.ndarray
    sequence: np.ndarray
    tokenizer: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.lengths = np.zeros(len(self.file), np.int64)
        for index, dataset in enumerate(self.files):
            chosen = self.file == index
            self.lengths[chosen] = document_lengths(dataset)[self.sequence[chosen]]

    def __len__(self) -> int:
        return len(self.file)

    def tokens(self, entry: int) -> np.ndarray:
        return self.files[self.file[entry]].document(int(self.sequence[entry]))

    def segments(self, entry: int) -> np.ndarray:
        """Lengths of the source-document segments inside the entry (one, unless it was packed)."""
        return self.files[self.file[entry]].document_sequence_lengths(int(self.sequence[entry]))

    def token_shares(self) -> np.ndarray:
        """Each component's share of the plan's tokens."""
        totals = np.bincount(self.component, weights=self.lengths, minlength=len(self.names))
        return totals / totals.sum()

    def vocabulary_size(self) -> int:
        """The tokenizer's vocabulary when recorded, else the largest token id + 1; rounded up to 64 for speed."""
        size = int(self.tokenizer["vocab_size"]) if self.tokenizer else 1 + largest_token_id(self.files)
        return 64 * math.ceil(size / 64)


def largest_token_id(datasets: list[IndexedDataset]) -> int:
    """The largest token id in the datasets (-1 when they are empty), read in chunks so any size fits in memory."""
    largest = -1
    for dataset in datasets:
        for start in range(0, len(dataset.tokens), 1 << 24):
            largest = max(largest, int(dataset.tokens[start:start + (1 << 24)].max()))
    return largest


def shuffled_plan(paths: list[str], seed: int) -> Plan:
    """Every training sequence of every path once, in a seeded random order; each path is one component."""
    prefixes = [(component, prefix) for component, path in enumerate(paths) for prefix in export_prefixes(path)]
    files = [IndexedDataset(prefix) for _, prefix in prefixes]
    component = np.concatenate([np.full(dataset.num_documents, index, np.int64)
                                for (index, _), dataset in zip(prefixes, files)])
    file = np.concatenate([np.full(dataset.num_documents, index, np.int64) for index, dataset in enumerate(files)])
    sequence = np.concatenate([np.arange(dataset.num_documents, dtype=np.int64) for dataset in files])
    order = np.random.default_rng(seed).permutation(len(file))
    names = [Path(path).name for path in paths]
    sidecar = read_sidecar(prefixes[0][1])
    return Plan(names if len(set(names)) == len(names) else list(paths), files, component[order], file[order],
                sequence[order], (sidecar or {}).get("tokenizer"))


def load_mixture_plan(path: str | Path) -> Plan:
    """A plan compiled by `gristmill mix` (a directory with plan.json and plan.npy, or plan.json itself)."""
    path = Path(path)
    header_path = path / PLAN_HEADER if path.is_dir() else path
    header = json.loads(header_path.read_text())
    rows = np.load(header_path.parent / header["array"])
    files = [IndexedDataset(header_path.parent / item["path"]) for item in header["files"]]
    names = [item["name"] for item in sorted(header["components"], key=lambda item: item["index"])]
    return Plan(names, files, rows[:, 0], rows[:, 1], rows[:, 2], header.get("tokenizer"))


@dataclass
class Batch:
    """One optimizer step's rows: targets are inputs shifted by one, IGNORE where nothing is predicted."""

    inputs: np.ndarray
    targets: np.ndarray
    document_ids: np.ndarray | None
    component_tokens: np.ndarray  # predicted tokens per plan component


def shifted(tokens: np.ndarray, documents: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Inputs, targets and input document ids of rows of seq_len + 1 tokens; negative document ids are padding."""
    targets = tokens[:, 1:].copy()
    if documents is None:
        return tokens[:, :-1], targets, None
    targets[(documents[:, 1:] != documents[:, :-1]) | (documents[:, 1:] < 0)] = IGNORE
    inputs_documents = documents[:, :-1].copy()
    padding = inputs_documents < 0  # padding attends only to itself: give each a distinct id
    inputs_documents[padding] = -1 - np.flatnonzero(padding.ravel()) % inputs_documents.shape[1]
    return tokens[:, :-1], targets, inputs_documents


class ConcatChunkBatcher:
    """The baseline: the plan's sequences end to end, cut into windows of seq_len + 1 tokens (stride seq_len).

    Windows cross document boundaries and attention is not masked, as in Megatron-style pretraining.
    """

    def __init__(self, plan: Plan, seq_len: int, tokens_per_step: int) -> None:
        if tokens_per_step % seq_len:
            raise ValueError(f"tokens_per_step {tokens_per_step} is not a multiple of seq_len {seq_len}")
        self.plan, self.seq_len, self.rows = plan, seq_len, tokens_per_step // seq_len
        self.ends = np.cumsum(plan.lengths)
        if self.ends[-1] <= seq_len:
            raise ValueError(f"the plan holds {self.ends[-1]} tokens, fewer than one window of {seq_len + 1}")
        self.windows_read = 0

    def state_dict(self) -> dict:
        return {"windows_read": self.windows_read}

    def load_state_dict(self, state: dict) -> None:
        self.windows_read = state["windows_read"]

    def read_tokens(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` tokens of the endless repetition of the plan from stream position `start`, and their components."""
        total = int(self.ends[-1])
        tokens, components = np.empty(count, np.int64), np.empty(count, np.int64)
        filled = 0
        while filled < count:
            position = (start + filled) % total
            entry = int(np.searchsorted(self.ends, position, side="right"))
            offset = position - (int(self.ends[entry - 1]) if entry else 0)
            piece = self.plan.tokens(entry)[offset:offset + count - filled]
            tokens[filled:filled + len(piece)] = piece
            components[filled:filled + len(piece)] = self.plan.component[entry]
            filled += len(piece)
        return tokens, components

    def next_batch(self) -> Batch:
        window, components = self.read_tokens(self.windows_read * self.seq_len, self.rows * self.seq_len + 1)
        self.windows_read += self.rows
        starts = np.arange(self.rows)[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
        inputs, targets, _ = shifted(window[starts], None)
        component_tokens = np.bincount(components[:-1], minlength=len(self.plan.names))
        return Batch(inputs, targets, None, component_tokens)


def pack_rows(plan: Plan, rows: list[list[tuple[int, int, int]]], capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token and document-id rows of `capacity` from (entry, start, stop) pieces, each piece its own document;
    padding has document id -1. Also returns predicted tokens per component."""
    tokens = np.zeros((len(rows), capacity), np.int64)
    documents = np.full((len(rows), capacity), -1, np.int64)
    component_tokens = np.zeros(len(plan.names), np.int64)
    for row, pieces in enumerate(rows):
        filled = 0
        for document, (entry, start, stop) in enumerate(pieces):
            tokens[row, filled:filled + stop - start] = plan.tokens(entry)[start:stop]
            documents[row, filled:filled + stop - start] = document
            component_tokens[plan.component[entry]] += stop - start - 1
            filled += stop - start
    return tokens, documents, component_tokens


def entry_pieces(plan: Plan, entry: int, capacity: int) -> list[tuple[int, int, int]]:
    """(entry, start, stop) per segment of the entry, longer segments cut into pieces of `capacity` that overlap
    by one token, so every token but a segment's first is still predicted once."""
    pieces, offset = [], 0
    for length in plan.segments(entry).tolist():
        for start in range(0, length - 1, capacity - 1):
            pieces.append((entry, offset + start, offset + min(start + capacity, length)))
        offset += length
    return pieces


class BestFitBatcher:
    """Best-fit-decreasing packing of whole segments into rows of seq_len + 1 tokens, with document masking.

    The plan is packed in windows of `window_entries` sequences; a row's tokens attend only within their own
    document, and the first token of each document is not a target.
    """

    def __init__(self, plan: Plan, seq_len: int, tokens_per_step: int, seed: int, window_entries: int = 4096) -> None:
        if tokens_per_step % seq_len:
            raise ValueError(f"tokens_per_step {tokens_per_step} is not a multiple of seq_len {seq_len}")
        if plan.lengths.max() < 2:
            raise ValueError("every sequence in the plan has fewer than 2 tokens: nothing to predict")
        self.plan, self.seq_len, self.rows, self.seed = plan, seq_len, tokens_per_step // seq_len, seed
        self.window_entries = min(window_entries, len(plan))
        self.window, self.bins_read = 0, 0
        self.bins = self.pack_window(0)

    def state_dict(self) -> dict:
        return {"window": self.window, "bins_read": self.bins_read}

    def load_state_dict(self, state: dict) -> None:
        self.window, self.bins_read = state["window"], state["bins_read"]
        self.bins = self.pack_window(self.window)

    def pack_window(self, window: int) -> list[list[tuple[int, int, int]]]:
        """Rows of pieces for window `window` of the endlessly repeated plan, in a seeded order."""
        capacity = self.seq_len + 1
        first = window * self.window_entries
        pieces = [piece for entry in (np.arange(first, first + self.window_entries) % len(self.plan)).tolist()
                  for piece in entry_pieces(self.plan, entry, capacity)]
        pieces.sort(key=lambda piece: piece[1] - piece[2])  # longest first; stable, so ties keep plan order
        free: list[tuple[int, int]] = []  # (space left, bin number), ascending
        bins: list[list[tuple[int, int, int]]] = []
        for piece in pieces:
            length = piece[2] - piece[1]
            slot = bisect.bisect_left(free, (length, -1))  # the fullest bin the piece still fits in
            if slot == len(free):
                bins.append([])
                space, number = capacity, len(bins) - 1
            else:
                space, number = free.pop(slot)
            bins[number].append(piece)
            if space - length > 1:  # a one-token piece predicts nothing
                bisect.insort(free, (space - length, number))
        order = np.random.default_rng([self.seed, window]).permutation(len(bins))
        return [bins[index] for index in order]

    def next_batch(self) -> Batch:
        rows = []
        for _ in range(self.rows):
            if self.bins_read == len(self.bins):
                self.window, self.bins_read = self.window + 1, 0
                self.bins = self.pack_window(self.window)
            rows.append(self.bins[self.bins_read])
            self.bins_read += 1
        tokens, documents, component_tokens = pack_rows(self.plan, rows, self.seq_len + 1)
        return Batch(*shifted(tokens, documents), component_tokens)


def curriculum_odds(curriculum: str, bucket_count: int) -> np.ndarray:
    """Per-batch odds of each bucket, shortest first: Uniform 1; Grow-Linear K..1; Grow-P2 2^(K-1)..1."""
    rank_from_longest = np.arange(bucket_count)[::-1]
    if curriculum == "uniform":
        return np.ones(bucket_count)
    if curriculum == "grow_linear":
        return rank_from_longest + 1.0
    if curriculum == "grow_p2":
        return 2.0**rank_from_longest
    raise ValueError(f"unknown curriculum {curriculum!r}; choose one of {', '.join(CURRICULA)}")


class DecomposedBatcher:
    """Dataset Decomposition: every step reads one bucket D_k, rows of 2^k inputs, tokens_per_step / 2^k rows.

    A file's bucket is its sidecar's capacity (2^k + 1 tokens, inputs and targets shift by one), else its longest
    sequence. Training runs in `cycles` cycles, each reading 1/cycles of every bucket's batches. Within a cycle the
    next batch comes from bucket k with probability odds_k · remaining_k / Σ_j odds_j · remaining_j (Pouransari et
    al. 2024): Uniform draws evenly over all remaining batches; Grow-Linear and Grow-P2 favour short buckets
    first, so sequence lengths grow as those empty. Packed sequences (several segments, or short) are padded and
    masked.
    """

    def __init__(self, plan: Plan, tokens_per_step: int, curriculum: str, cycles: int, seed: int) -> None:
        self.plan, self.seed = plan, seed
        capacities = np.array([file_capacity(dataset) for dataset in plan.files])
        inputs = capacities - 1
        if np.any((inputs < 1) | (inputs & (inputs - 1) != 0)):
            raise ValueError(f"Dataset Decomposition needs buckets of 2^k + 1 tokens; found capacities {capacities.tolist()}")
        self.capacity = capacities[plan.file]
        segment_counts = np.concatenate([np.diff(dataset.document_indices) for dataset in plan.files])
        first_of_file = np.cumsum([0] + [dataset.num_documents for dataset in plan.files])
        # One full-length segment needs no padding and no mask.
        self.unpacked = (segment_counts[first_of_file[plan.file] + plan.sequence] == 1) & (plan.lengths == self.capacity)
        self.bucket_lengths = np.unique(inputs)  # input tokens per row, shortest first
        if tokens_per_step % self.bucket_lengths[-1]:
            raise ValueError(f"tokens_per_step {tokens_per_step} is not a multiple of the longest bucket, "
                             f"{self.bucket_lengths[-1]} tokens")
        self.rows = tokens_per_step // self.bucket_lengths
        self.queues = [np.flatnonzero(self.capacity - 1 == length) for length in self.bucket_lengths]
        self.batches_per_cycle = np.array(
            [math.ceil(len(queue) / (rows * cycles)) for queue, rows in zip(self.queues, self.rows)])
        self.odds = curriculum_odds(curriculum, len(self.bucket_lengths))
        self.steps_read = 0
        self._cycle, self._schedule, self._ordinal = -1, np.empty(0, np.int64), np.empty(0, np.int64)

    def state_dict(self) -> dict:
        return {"steps_read": self.steps_read}

    def load_state_dict(self, state: dict) -> None:
        self.steps_read = state["steps_read"]

    def cycle_schedule(self, cycle: int) -> tuple[np.ndarray, np.ndarray]:
        """The bucket of each step of one cycle, and each step's ordinal among its bucket's steps in the cycle.

        Drawing batches one at a time with probability ∝ odds among those left is weighted sampling without
        replacement, done at once by sorting keys log(u) / odds (Efraimidis and Spirakis, 2006).
        """
        buckets = np.repeat(np.arange(len(self.odds)), self.batches_per_cycle)
        keys = np.log(np.random.default_rng([self.seed, cycle]).random(len(buckets))) / self.odds[buckets]
        schedule = buckets[np.argsort(-keys, kind="stable")]
        ordinal = np.empty_like(schedule)
        for bucket in range(len(self.odds)):
            chosen = schedule == bucket
            ordinal[chosen] = np.arange(chosen.sum())
        return schedule, ordinal

    def next_bucket(self) -> tuple[int, int]:
        """The bucket of the next step and how many batches that bucket has served before it."""
        cycle, index = divmod(self.steps_read, int(self.batches_per_cycle.sum()))
        if cycle != self._cycle:
            self._cycle = cycle
            self._schedule, self._ordinal = self.cycle_schedule(cycle)
        bucket = int(self._schedule[index])
        return bucket, cycle * int(self.batches_per_cycle[bucket]) + int(self._ordinal[index])

    def next_batch(self) -> Batch:
        bucket, served = self.next_bucket()
        rows, queue = int(self.rows[bucket]), self.queues[bucket]
        capacity = int(self.bucket_lengths[bucket]) + 1
        entries = queue[np.arange(served * rows, (served + 1) * rows) % len(queue)].tolist()
        self.steps_read += 1
        if self.unpacked[entries].all():
            tokens = np.stack([self.plan.tokens(entry) for entry in entries]).astype(np.int64)
            component_tokens = np.bincount(self.plan.component[entries], minlength=len(self.plan.names))
            return Batch(*shifted(tokens, None), component_tokens * (capacity - 1))
        pieces = [entry_pieces(self.plan, entry, capacity) for entry in entries]
        tokens, documents, component_tokens = pack_rows(self.plan, pieces, capacity)
        return Batch(*shifted(tokens, documents), component_tokens)


def file_capacity(dataset: IndexedDataset) -> int:
    sidecar = read_sidecar(dataset.prefix)
    return int(sidecar["capacity"]) if sidecar and "capacity" in sidecar else int(document_lengths(dataset).max())


@dataclass
class HeldOutWindows:
    """A held-out set cut into evaluation rows, with the UTF-8 bytes of the tokens it predicts."""

    inputs: np.ndarray
    targets: np.ndarray
    document_ids: np.ndarray
    predicted_bytes: int


def held_out_windows(path: str | Path, seq_len: int, max_tokens: int) -> HeldOutWindows:
    """The first segments of a held-out export (up to max_tokens), end to end in rows of seq_len + 1 tokens.

    Each segment is its own document: attention stays inside it and its first token is not a target. The bytes
    are those of the predicted tokens, decoded with the tokenizer the export's sidecar records.
    """
    segments: list[np.ndarray] = []
    tokenizer: LoadedTokenizer | None = None
    taken = 0
    for prefix in export_prefixes(path):
        sidecar = read_sidecar(prefix)
        if sidecar is None or "tokenizer" not in sidecar:
            raise ValueError(f"{prefix}.json: bits per byte needs the sidecar naming the tokenizer")
        if tokenizer is None:
            record = sidecar["tokenizer"]
            tokenizer = load_tokenizer(record["path"], record["eos_token"])
            if tokenizer.fingerprint != record["fingerprint"]:
                raise ValueError(f"tokenizer at {record['path']} has changed since {prefix} was exported")
        dataset = IndexedDataset(prefix)
        for index in range(len(dataset)):
            if taken >= max_tokens:
                break
            segments.append(np.asarray(dataset[index], np.int64))
            taken += len(segments[-1])
    predicted_text = tokenizer.tokenizer.decode_batch([segment[1:].tolist() for segment in segments],
                                                      skip_special_tokens=True)
    predicted_bytes = sum(len(text.encode("utf-8")) for text in predicted_text)
    tokens = np.concatenate(segments)
    documents = np.repeat(np.arange(len(segments)), [len(segment) for segment in segments])
    rows = max(1, -(-(len(tokens) - 1) // seq_len))
    padding = rows * seq_len + 1 - len(tokens)
    tokens = np.concatenate([tokens, np.zeros(padding, np.int64)])
    documents = np.concatenate([documents, np.full(padding, -1)])
    starts = np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    inputs, targets, input_documents = shifted(tokens[starts], documents[starts])
    return HeldOutWindows(inputs, targets, input_documents, predicted_bytes)
