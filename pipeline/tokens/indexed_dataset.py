"""Megatron-compatible indexed datasets: a `.bin` of token ids and an `.idx` index, read by memmap.

The format Megatron-LM, NeMo and GPT-NeoX train from, so Gristmill's shards need no conversion;
the writer streams tokens to disk and the reader hands out zero-copy numpy views.

Layout of `PREFIX.idx` (little-endian)::

    b"MMIDIDX\\x00\\x00"          9-byte magic
    version          uint64    always 1
    dtype code       uint8     token dtype of the .bin (uint16 = 8, int32 = 4, see DTYPE_CODES)
    sequence count   uint64    S
    document count   uint64    D + 1 (the length of the document index)
    sequence lengths int32[S]  tokens per sequence
    pointers         int64[S]  byte offset of each sequence in the .bin
    document index   int64[D+1] sequence index where each document starts, then S

`PREFIX.bin` is the sequences' tokens back to back. A document is a run of consecutive
sequences; Gristmill writes one training sequence per document and one sequence per segment
of a source document inside it, so segment boundaries (for attention masks) are the lengths.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from gristmill.pipeline.engine.files import atomic_path, temporary_name

if TYPE_CHECKING:
    from typing import Self

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_BYTES = len(INDEX_MAGIC) + 8 + 1 + 8 + 8
# Megatron's dtype codes; the index stores the code of the .bin's token type.
DTYPE_CODES: dict[type[np.number], int] = {
    np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7, np.uint16: 8,
}
DTYPES_BY_CODE = {code: dtype for dtype, code in DTYPE_CODES.items()}


class IndexedDatasetError(Exception):
    """An indexed dataset on disk is missing or malformed; the message names the file."""


def token_dtype(vocab_size: int) -> type[np.number]:
    """uint16 when every token id fits (vocabulary of at most 65,536), else int32."""
    return np.uint16 if vocab_size <= 1 << 16 else np.int32


def bin_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.idx")


@dataclass(frozen=True)
class WrittenDataset:
    """What a finished writer produced: counts and checksums, for sidecars and `verify`."""

    prefix: str
    dtype: str
    sequences: int
    documents: int
    tokens: int
    bin_checksum: str
    idx_checksum: str


class IndexedDatasetWriter:
    """Streams token sequences into `PREFIX.bin`; `finish` writes `PREFIX.idx` and moves both into place.

    Tokens go to disk as they arrive; only the per-sequence lengths (4 bytes each) and the
    document index stay in memory. Both files appear under their final names only once
    complete, so a reader never sees half a dataset.
    """

    def __init__(self, prefix: str | Path, dtype: type[np.number]):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype.type not in DTYPE_CODES or self.dtype.kind not in "iu":
            raise ValueError(f"unsupported token dtype {self.dtype}")
        self._limit = np.iinfo(self.dtype).max
        self._temporary_bin = temporary_name(bin_path(prefix))
        self._bin = open(self._temporary_bin, "wb")  # noqa: SIM115 - held open until finish() or abort()
        self._digest = xxhash.xxh3_128()
        self._lengths: list[np.ndarray] = []
        self._documents_per_batch: list[np.ndarray] = []

    def add_batch(self, tokens: np.ndarray, sequence_lengths: np.ndarray, sequences_per_document: np.ndarray) -> None:
        """Append documents: `tokens` back to back, split into sequences, grouped into documents."""
        sequence_lengths = np.asarray(sequence_lengths, dtype=np.int64)
        sequences_per_document = np.asarray(sequences_per_document, dtype=np.int64)
        if int(sequence_lengths.sum()) != len(tokens) or int(sequences_per_document.sum()) != len(sequence_lengths):
            raise ValueError("sequence lengths must add up to the tokens, and documents to the sequences")
        if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) > self._limit):
            raise ValueError(f"token ids outside the range of {self.dtype.name}")
        data = np.ascontiguousarray(tokens, dtype=self.dtype).tobytes()
        self._bin.write(data)
        self._digest.update(data)
        self._lengths.append(sequence_lengths.astype(np.int32))
        self._documents_per_batch.append(sequences_per_document)

    def add_document(self, sequences: Sequence[np.ndarray]) -> None:
        """Append one document made of the given sequences."""
        lengths = np.array([len(sequence) for sequence in sequences], dtype=np.int64)
        tokens = np.concatenate(sequences) if len(sequences) else np.zeros(0, self.dtype)
        self.add_batch(tokens, lengths, np.array([len(sequences)]))

    def finish(self) -> WrittenDataset:
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        per_document = np.concatenate(self._documents_per_batch) if self._documents_per_batch else np.zeros(0, np.int64)
        pointers = np.zeros(len(lengths), np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        document_index = np.zeros(len(per_document) + 1, np.int64)
        np.cumsum(per_document, out=document_index[1:])
        index_bytes = b"".join([
            INDEX_MAGIC,
            struct.pack("<Q", INDEX_VERSION),
            struct.pack("<B", DTYPE_CODES[self.dtype.type]),
            struct.pack("<Q", len(lengths)),
            struct.pack("<Q", len(document_index)),
            lengths.astype("<i4").tobytes(),
            pointers.astype("<i8").tobytes(),
            document_index.astype("<i8").tobytes(),
        ])
        with atomic_path(idx_path(self.prefix)) as temporary_idx:  # the .idx appears last, once its .bin is in place
            temporary_idx.write_bytes(index_bytes)
            os.replace(self._temporary_bin, bin_path(self.prefix))
        return WrittenDataset(
            prefix=self.prefix,
            dtype=self.dtype.name,
            sequences=len(lengths),
            documents=len(per_document),
            tokens=int(lengths.sum(dtype=np.int64)),
            bin_checksum="xxh3_128:" + self._digest.hexdigest(),
            idx_checksum="xxh3_128:" + xxhash.xxh3_128_hexdigest(index_bytes),
        )

    def abort(self) -> None:
        self._bin.close()
        self._temporary_bin.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.abort()


class IndexedDataset:
    """Read-only, memory-mapped view of `PREFIX.bin` + `PREFIX.idx`.

    `dataset[i]` is sequence i as a numpy view (no copy); `document(j)` is document j's
    sequences as one contiguous view, and `document_sequence_lengths(j)` where they split;
    `tokens` is the whole `.bin`.
    """

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        index_file = idx_path(prefix)
        if not index_file.exists() or not bin_path(prefix).exists():
            raise IndexedDatasetError(f"{self.prefix}: missing {bin_path(prefix).name} or {index_file.name}")
        index = np.memmap(index_file, dtype=np.uint8, mode="r")
        if len(index) < HEADER_BYTES or bytes(index[:len(INDEX_MAGIC)]) != INDEX_MAGIC:
            raise IndexedDatasetError(f"{index_file}: not a Megatron index (bad magic)")
        header = bytes(index[len(INDEX_MAGIC):HEADER_BYTES])
        version, code, sequence_count, document_count = struct.unpack("<QBQQ", header)
        if version != INDEX_VERSION:
            raise IndexedDatasetError(f"{index_file}: unsupported index version {version}")
        if code not in DTYPES_BY_CODE:
            raise IndexedDatasetError(f"{index_file}: unknown dtype code {code}")
        expected = HEADER_BYTES + sequence_count * 12 + document_count * 8
        if len(index) != expected:
            raise IndexedDatasetError(f"{index_file}: {len(index)} bytes, header implies {expected}")
        self.dtype = np.dtype(DTYPES_BY_CODE[code])
        offset = HEADER_BYTES
        self.sequence_lengths = np.frombuffer(index, "<i4", sequence_count, offset)
        offset += self.sequence_lengths.nbytes
        self.sequence_pointers = np.frombuffer(index, "<i8", sequence_count, offset)
        offset += self.sequence_pointers.nbytes
        self.document_indices = np.frombuffer(index, "<i8", document_count, offset)
        size = bin_path(prefix).stat().st_size
        self.tokens = (np.memmap(bin_path(prefix), dtype=self.dtype, mode="r") if size
                        else np.zeros(0, self.dtype))

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sequence {index} out of range for {len(self)} sequences")
        start = int(self.sequence_pointers[index]) // self.dtype.itemsize
        return self.tokens[start:start + int(self.sequence_lengths[index])]

    @property
    def num_documents(self) -> int:
        return max(len(self.document_indices) - 1, 0)

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))

    def document(self, index: int) -> np.ndarray:
        first, end = int(self.document_indices[index]), int(self.document_indices[index + 1])
        if first == end:
            return self.tokens[:0]
        start = int(self.sequence_pointers[first]) // self.dtype.itemsize
        return self.tokens[start:start + int(self.sequence_lengths[first:end].sum(dtype=np.int64))]

    def document_sequence_lengths(self, index: int) -> np.ndarray:
        return self.sequence_lengths[int(self.document_indices[index]):int(self.document_indices[index + 1])]

    def problems(self) -> list[str]:
        """Inconsistencies between index and data: empty when the dataset is sound."""
        found = []
        lengths = self.sequence_lengths.astype(np.int64)
        if len(lengths) and lengths.min() < 0:
            found.append("negative sequence length")
        expected_pointers = np.zeros(len(lengths), np.int64)
        np.cumsum(lengths[:-1] * self.dtype.itemsize, out=expected_pointers[1:])
        if not np.array_equal(expected_pointers, self.sequence_pointers):
            found.append("sequence pointers are not the running sum of the lengths")
        data_bytes = len(self.tokens) * self.dtype.itemsize
        if int(lengths.sum()) * self.dtype.itemsize != data_bytes:
            found.append(f"index covers {int(lengths.sum())} tokens, {bin_path(self.prefix).name} holds "
                         f"{data_bytes // self.dtype.itemsize}")
        documents = self.document_indices
        if len(documents) == 0 or documents[0] != 0 or documents[-1] != len(lengths):
            found.append("document index does not run from 0 to the sequence count")
        elif np.any(np.diff(documents) < 0):
            found.append("document index is not ascending")
        return found
