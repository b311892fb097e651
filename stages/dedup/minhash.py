"""Text normalisation, shingling and bulk MinHash signatures, bit-identical to datasketch's `affine32` scheme.

Whole batches are hashed with Arrow and numpy, so near-duplicate detection costs seconds per million documents.

A shingle's hash H is defined on the shingle itself, so datasketch gives the same signature
when fed `Shingler.shingles(text)` with `hashfunc=Shingler.hash_shingle`: each token (a word,
or a character) is hashed with xxh64 of its UTF-8 bytes, the n token hashes are combined as a
polynomial modulo 2^64, and the MurmurHash3 64-bit finalizer's top 32 bits are H. Only the
distinct tokens of a batch meet Python; the n-gram combination runs in numpy.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from gristmill.stages.words import whitespace_words

ShingleKind = Literal["word", "char"]

MAX_HASH32 = np.uint32(0xFFFFFFFF)
MASK64 = (1 << 64) - 1
# Odd multiplier of the polynomial that combines token hashes into a shingle hash (a 64-bit prime).
TOKEN_MULTIPLIER = 0x9E3779B97F4A7C15 | 1
# Documents per chunk of the permutation step: keeps the per-permutation temporaries in cache.
SHINGLES_PER_CHUNK = 1 << 18


@dataclass(frozen=True)
class Normalization:
    """What is folded away before hashing: case, Unicode compatibility forms, punctuation, spacing."""

    lowercase: bool = True
    nfkc: bool = True
    strip_punctuation: bool = True
    collapse_whitespace: bool = True

    def apply(self, texts: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Normalise whole texts (null becomes empty), as exact dedup and character shingles see them."""
        texts = self._fold(_as_array(texts))
        if self.collapse_whitespace:
            texts = pc.utf8_trim_whitespace(pc.binary_join(pc.utf8_split_whitespace(texts), " "))
        return texts

    def apply_to_words(self, words: pa.Array) -> pa.Array:
        """Normalise words split at whitespace; a word that NFKC expands to several loses its inner spaces."""
        words = self._fold(words)
        return pc.replace_substring_regex(words, r"\s+", "") if self.nfkc else words

    def _fold(self, texts: pa.Array) -> pa.Array:
        if self.nfkc:
            # Python's NFKC has a quick check that skips text already in normal form: 10x Arrow's speed here.
            texts = pa.array([unicodedata.normalize("NFKC", text) for text in texts.to_pylist()], pa.string())
        if self.lowercase:
            texts = pc.utf8_lower(texts)
        if self.strip_punctuation:
            texts = pc.replace_substring_regex(texts, r"\p{P}+", "")
        return texts


def _as_array(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    texts = pc.fill_null(texts, "")
    return texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts


def fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, element-wise on uint64 (wrapping multiplication is intended)."""
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xFF51AFD7ED558CCD)
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xC4CEB9FE1A85EC53)
    return values ^ (values >> np.uint64(33))


def fmix64_int(value: int) -> int:
    value ^= value >> 33
    value = (value * 0xFF51AFD7ED558CCD) & MASK64
    value ^= value >> 33
    value = (value * 0xC4CEB9FE1A85EC53) & MASK64
    return value ^ (value >> 33)


def fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer on uint32: datasketch's pre-mix of every input hash."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


def hash_strings(values: list[str]) -> np.ndarray:
    """xxh64 of each string's UTF-8 bytes (the token hash), as uint64."""
    return np.fromiter((xxhash.xxh64_intdigest(value.encode()) for value in values), np.uint64, len(values))


@dataclass(frozen=True)
class Shingler:
    """Turns texts into shingles (word or character n-grams of the normalised text) and their 32-bit hashes.

    A document with fewer than n tokens is one shingle of all its tokens; one with none has no shingles.
    """

    kind: ShingleKind = "word"
    n: int = 5
    normalization: Normalization = Normalization()

    def tokens(self, texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """Token hashes of every document, concatenated, and each document's offsets into them (D + 1).

        Words are normalised once per distinct word of the batch, not once per occurrence.
        """
        if self.kind == "char":
            normalized = self.normalization.apply(texts)
            lengths = pc.utf8_length(normalized).to_numpy(zero_copy_only=False).astype(np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            code_points = np.frombuffer("".join(normalized.to_pylist()).encode("utf-32-le"), np.uint32)
            distinct, inverse = np.unique(code_points, return_inverse=True)
            return hash_strings([chr(point) for point in distinct.tolist()])[inverse], offsets
        words = whitespace_words(_as_array(texts))
        offsets = words.offsets.to_numpy().astype(np.int64)
        flat = words.values.slice(offsets[0], offsets[-1] - offsets[0])
        offsets -= offsets[0]
        encoded = pc.dictionary_encode(flat)
        distinct = self.normalization.apply_to_words(encoded.dictionary).to_pylist()
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        token_hashes = hash_strings(distinct)[indices]
        empty = np.array([not word for word in distinct], bool)
        if empty.any():  # words that were all punctuation vanish, and documents' offsets shrink with them
            dropped = empty[indices]
            token_hashes = token_hashes[~dropped]
            offsets = offsets - np.concatenate([[0], np.cumsum(dropped)])[offsets]
        return token_hashes, offsets

    def hashes(self, texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes (uint32) of every document, concatenated, and each document's offsets (D + 1)."""
        token_hashes, offsets = self.tokens(texts)
        return combine_ngrams(token_hashes, offsets, self.n)

    def shingles(self, text: str) -> list[bytes]:
        """One document's shingles as bytes, in order: what to feed datasketch with `hashfunc=self.hash_shingle`."""
        if self.kind == "word":
            words = whitespace_words(pa.array([text], pa.string()))[0].values
            tokens = [word.encode() for word in self.normalization.apply_to_words(words).to_pylist() if word]
            joiner = b" "
        else:
            tokens = [char.encode() for char in self.normalization.apply(pa.array([text], pa.string()))[0].as_py()]
            joiner = b""
        if not tokens:
            return []
        if len(tokens) < self.n:
            return [joiner.join(tokens)]
        return [joiner.join(tokens[start:start + self.n]) for start in range(len(tokens) - self.n + 1)]

    def hash_shingle(self, shingle: bytes) -> int:
        """H: the 32-bit hash of one shingle, the same value `hashes` computes in bulk."""
        tokens = shingle.split(b" ") if self.kind == "word" else [char.encode() for char in shingle.decode()]
        combined = 0
        for token in tokens:
            combined = (combined * TOKEN_MULTIPLIER + xxhash.xxh64_intdigest(token)) & MASK64
        return fmix64_int(combined) >> 32


def combine_ngrams(token_hashes: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash every n-gram of every document from its token hashes (polynomial mod 2^64, then fmix64's top 32 bits)."""
    multiplier = np.uint64(TOKEN_MULTIPLIER)
    counts = np.diff(offsets)
    shingle_counts = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1))
    shingle_offsets = np.concatenate([[0], np.cumsum(shingle_counts)]).astype(np.int64)
    combined = np.zeros(int(shingle_offsets[-1]), np.uint64)

    full = counts >= n
    if full.any() and len(token_hashes) >= n:
        windows = len(token_hashes) - n + 1
        rolling = token_hashes[:windows].copy()
        for k in range(1, n):
            rolling = rolling * multiplier + token_hashes[k:k + windows]
        windows_per_document = shingle_counts[full]
        within = np.arange(int(windows_per_document.sum())) - np.repeat(
            np.cumsum(windows_per_document) - windows_per_document, windows_per_document)
        token_starts = np.repeat(offsets[:-1][full], windows_per_document) + within
        combined[np.repeat(shingle_offsets[:-1][full], windows_per_document) + within] = rolling[token_starts]

    short = (counts > 0) & (counts < n)
    if short.any():
        starts, lengths = offsets[:-1][short], counts[short]
        accumulated = np.zeros(len(starts), np.uint64)
        for k in range(int(lengths.max())):
            take = k < lengths
            accumulated[take] = accumulated[take] * multiplier + token_hashes[starts[take] + k]
        combined[shingle_offsets[:-1][short]] = accumulated
    return (fmix64(combined) >> np.uint64(32)).astype(np.uint32), shingle_offsets


@dataclass(frozen=True)
class MinHasher:
    """Bulk MinHash with datasketch's default `affine32` permutations: a*fmix32(h) + b mod 2^32, a odd."""

    num_perm: int = 128
    seed: int = 1

    @property
    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) exactly as `datasketch.MinHash(num_perm, seed)` draws them for `affine32`."""
        generator = np.random.RandomState(self.seed)
        a = generator.randint(0, 1 << 31, self.num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = generator.randint(0, 1 << 32, self.num_perm, dtype=np.uint32)
        return a, b

    def signatures(self, shingle_hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Signatures (D x num_perm, uint32) of documents given their concatenated shingle hashes and offsets.

        A document without shingles gets datasketch's empty signature (all 2^32 - 1).
        """
        a, b = self.permutations
        documents = len(offsets) - 1
        signatures = np.full((documents, self.num_perm), MAX_HASH32, np.uint32)
        mixed = fmix32(shingle_hashes.astype(np.uint32, copy=False))
        first = 0
        while first < documents:
            # A chunk of whole documents holding about SHINGLES_PER_CHUNK shingles.
            last = int(np.searchsorted(offsets, offsets[first] + SHINGLES_PER_CHUNK, side="right")) - 1
            last = min(max(last, first + 1), documents)
            chunk_offsets = offsets[first:last + 1]
            values = mixed[chunk_offsets[0]:chunk_offsets[-1]]
            non_empty = np.flatnonzero(np.diff(chunk_offsets) > 0)
            if len(non_empty):
                starts = chunk_offsets[non_empty] - chunk_offsets[0]
                permuted = np.empty_like(values)
                block = np.empty((self.num_perm, len(non_empty)), np.uint32)
                for k in range(self.num_perm):
                    np.multiply(values, a[k], out=permuted)
                    permuted += b[k]
                    block[k] = np.minimum.reduceat(permuted, starts)
                signatures[first + non_empty] = block.T
            first = last
        return signatures

    def signatures_of(self, texts: pa.Array | pa.ChunkedArray, shingler: Shingler) -> np.ndarray:
        return self.signatures(*shingler.hashes(texts))


def to_datasketch(signature: np.ndarray, seed: int = 1):
    """A `datasketch.LeanMinHash` holding this signature, ready for `MinHashLSH.insert` / `query`."""
    from datasketch import LeanMinHash  # only exporters need datasketch; workers never import it

    return LeanMinHash(seed=seed, hashvalues=np.asarray(signature, np.uint32), scheme="affine32")


def band_hashes(signatures: np.ndarray, bands: int, rows: int, salt: np.ndarray | None = None) -> np.ndarray:
    """One 64-bit hash per document and band (D x bands) of the band's `rows` signature values.

    `salt` (one uint64 per document, e.g. a hash of its source) keeps documents with different
    salts out of each other's buckets: that is how local (per-source) deduplication works.
    """
    multiplier = np.uint64(TOKEN_MULTIPLIER)
    documents = signatures.shape[0]
    base = np.zeros(documents, np.uint64) if salt is None else salt.astype(np.uint64)
    result = np.empty((documents, bands), np.uint64)
    for band in range(bands):
        accumulated = base ^ np.uint64(band + 1)
        for value in signatures[:, band * rows:(band + 1) * rows].T:
            accumulated = accumulated * multiplier + value.astype(np.uint64)
        result[:, band] = fmix64(accumulated)
    return result
