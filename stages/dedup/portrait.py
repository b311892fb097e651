"""Data portraits: a Bloom filter over a dataset's 50-character windows, shipped beside the data, that answers
"was this text in it?" in microseconds and at any alignment (Marone & Van Durme, 2023).

A pure library: build (streaming, bounded by the filter's own size), query, merge and the file format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from gristmill.pipeline.engine.dataset import Dataset, DatasetError
from gristmill.pipeline.engine.files import Location, as_location, atomic_path

FORMAT = "gristmill.portrait"
VERSION = 1
MAGIC = b"GMPORTR\x01"
SUFFIX = ".bloom"
WIDTH = 50  # characters per window, the paper's
# What decides which bits a text sets: a sketch is only comparable with another of exactly this scheme.
SCHEME = {
    "unit": "character",
    "width": WIDTH,
    "build_stride": WIDTH,
    "query_stride": 1,
    "normalise": "utf8_lower; words (utf8_split_whitespace) joined by one space",
    "hash": "poly64(M=0x9E3779B97F4A7C15) of code points, fmix64 with two seeds, double hashing mod bits",
}
SPACE = pa.scalar(" ", pa.large_string())
MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2^64
MULTIPLIER_INVERSE = np.uint64(pow(int(MULTIPLIER), -1, 1 << 64))
FMIX_1, FMIX_2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
SLICE_CHARACTERS = 1 << 20  # hashed at once: bounds the temporaries (~40 bytes a character)
GROUP_CHARACTERS = 1 << 22  # texts converted to code points at once (a longer text alone, 4 bytes a character)
DEFAULT_FPR = 1e-3
PROBE_BLOCK = 1 << 16  # windows looked up together: their temporaries stay in cache
ALL_PROBES_AT_ONCE = 4096  # windows up to which `contains` reads all k bits in one gather (fewer numpy calls)
# Fields two sketches must share to merge (bitwise OR) into what one build over both would give.
MERGE_FIELDS = ("format", "version", "scheme", "seed", "seeds", "capacity", "target_fpr", "bits", "hashes")
DERIVED_FIELDS = ("bits_set", "design_fpr", "checksum")  # recomputed from the bits when written and when read


class PortraitError(Exception):
    """A sketch cannot be read, built or merged; the message is one line naming the file or field."""


# ---------------------------------------------------------------- text to windows


def normalise(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lowercase, and the words (runs of non-whitespace, Unicode's definition) joined by one space: layout and
    case do not hide a copy. Trimmed before the split, as in `stages/words.py`, so a split never reads past a text."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    lowered = pc.utf8_lower(pc.fill_null(texts.cast(pa.large_string()), ""))
    return pc.binary_join(pc.utf8_split_whitespace(pc.utf8_trim_whitespace(lowered)), SPACE)


def character_counts(normalised: pa.Array) -> np.ndarray:
    return pc.utf8_length(normalised).to_numpy(zero_copy_only=False).astype(np.int64)


def code_points(normalised: pa.Array) -> np.ndarray:
    """Every text's code points end to end, as uint32 (one UTF-32 encode of the whole group)."""
    offsets = np.frombuffer(normalised.buffers()[1], np.int64)[normalised.offset: normalised.offset + len(normalised) + 1]
    data = normalised.buffers()[2]
    if data is None or offsets[-1] == offsets[0]:
        return np.zeros(0, np.uint32)
    utf8 = data[int(offsets[0]): int(offsets[-1])].to_pybytes()
    return np.frombuffer(utf8.decode("utf-8").encode("utf-32-le"), np.uint32)


def text_groups(normalised: pa.Array, counts: np.ndarray) -> Iterator[tuple[pa.Array, np.ndarray]]:
    """Consecutive texts of about GROUP_CHARACTERS together (a longer text alone), with their counts."""
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + GROUP_CHARACTERS, "right")))
        yield normalised.slice(start, stop - start), counts[start:stop]
        start = stop


_powers: list[np.ndarray] = [np.ones(1, np.uint64), np.ones(1, np.uint64)]


def powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    """M^i and M^-i mod 2^64 for i < length, grown by doubling and kept."""
    if len(_powers[0]) < length:
        size = max(length, 2 * len(_powers[0]))
        for index, multiplier in enumerate((MULTIPLIER, MULTIPLIER_INVERSE)):
            factors = np.full(size, multiplier)
            factors[0] = 1
            _powers[index] = np.cumprod(factors, dtype=np.uint64)
    return _powers[0][:length], _powers[1][:length]


def window_hashes(points: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """h(s) = Σ_j points[s+j]·M^j mod 2^64 for the WIDTH characters from each sorted start, through prefix sums:
    a constant number of passes over the text whatever the width, one slice of the text at a time."""
    hashes = np.empty(len(starts), np.uint64)
    with np.errstate(over="ignore"):
        for first in range(0, len(points), SLICE_CHARACTERS):
            low, high = np.searchsorted(starts, [first, first + SLICE_CHARACTERS])
            if low == high:
                continue
            piece = points[first: first + SLICE_CHARACTERS + WIDTH - 1]
            forward, backward = powers(len(piece))
            prefix = np.zeros(len(piece) + 1, np.uint64)
            np.cumsum(piece * forward, out=prefix[1:])  # uint32 code points times uint64 powers: uint64
            local = starts[low:high] - first
            hashes[low:high] = (prefix[local + WIDTH] - prefix[local]) * backward[local]
    return hashes


def mixed(values: np.ndarray, seed: np.uint64) -> np.ndarray:
    """murmur3's 64-bit finaliser of values ^ seed: every input bit reaches every output bit."""
    with np.errstate(over="ignore"):
        values = values ^ seed
        values ^= values >> np.uint64(33)
        values *= FMIX_1
        values ^= values >> np.uint64(33)
        values *= FMIX_2
        values ^= values >> np.uint64(33)
    return values


def ranks_within(counts: np.ndarray) -> np.ndarray:
    """0..count-1 for each count, end to end."""
    total = int(counts.sum())
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)


def aligned_starts(counts: np.ndarray) -> np.ndarray:
    """Build windows: each text cut into non-overlapping WIDTH-character windows from its first character."""
    per_text = counts // WIDTH
    return np.repeat(np.cumsum(counts) - counts, per_text) + ranks_within(per_text) * WIDTH


def every_start(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Query windows: one at every character that has WIDTH characters from it in its text; and each one's text."""
    per_text = np.maximum(counts - WIDTH + 1, 0)
    texts = np.repeat(np.arange(len(counts)), per_text)
    return np.repeat(np.cumsum(counts) - counts, per_text) + ranks_within(per_text), texts


# ---------------------------------------------------------------- sizing


def size_for(capacity: int, target_fpr: float) -> tuple[int, int]:
    """Bits m = ⌈-n·ln p / ln²2⌉ rounded up to whole 64-bit words, and hashes k = round(m/n · ln 2)."""
    capacity = max(int(capacity), 1)
    bits = max(64, -(-math.ceil(-capacity * math.log(target_fpr) / math.log(2) ** 2) // 64) * 64)
    return bits, max(1, round(bits / capacity * math.log(2)))


def design_fpr(bits: int, hashes: int, items: int) -> float:
    """(1 - e^(-k·n/m))^k: the chance a window never inserted reads as present after n insertions."""
    return (1.0 - math.exp(-hashes * items / bits)) ** hashes


def count_windows(batches: Iterable[pa.Array]) -> int:
    """The first pass: build windows the texts will insert, so the filter is sized before the second."""
    return sum(int(np.sum(character_counts(normalise(texts)) // WIDTH)) for texts in batches)


def derived_seeds(seed: int) -> list[str]:
    return [f"{xxhash.xxh3_64_intdigest(f'{FORMAT}/{seed}/{index}'.encode()):016x}" for index in range(2)]


# ---------------------------------------------------------------- the filter


@dataclass
class Matches:
    """Per queried text: its windows, those found, and the longest run of aligned hits (the matched span)."""

    characters: np.ndarray  # normalised length
    windows: np.ndarray  # windows at every offset: characters - WIDTH + 1, at least 0
    hits: np.ndarray  # of those, found in the filter (false positives included)
    found: np.ndarray  # windows inside runs of hits WIDTH apart: the text the data is shown to hold
    longest: np.ndarray  # the longest run, in windows
    longest_start: np.ndarray  # its first character in the normalised text, -1 when none

    @property
    def share(self) -> np.ndarray:
        return np.divide(self.found, self.windows, out=np.zeros(len(self.windows)), where=self.windows > 0)

    @property
    def longest_characters(self) -> np.ndarray:
        return self.longest * WIDTH


@dataclass
class Runs:
    """Per text, from its hits alone: hits, windows inside runs, the longest run and where it starts."""

    hits: np.ndarray
    found: np.ndarray
    longest: np.ndarray
    longest_start: np.ndarray


def find_runs(starts: np.ndarray, texts: np.ndarray, text_starts: np.ndarray) -> Runs:
    """Runs of hits exactly WIDTH apart in one text (a stretch of the data, window after window), their union
    per text in windows, and each text's longest run. `starts` are the hits' window starts, end to end."""
    count = len(text_starts)
    runs = Runs(np.zeros(count, np.int64), np.zeros(count, np.int64), np.zeros(count, np.int64),
                np.full(count, -1, np.int64))
    if not len(starts):
        return runs
    phase = (starts - text_starts[texts]) % WIDTH
    order = np.lexsort((starts, phase, texts))
    starts, texts = starts[order], texts[order]
    linked = np.zeros(len(starts), bool)
    linked[1:] = (texts[1:] == texts[:-1]) & (starts[1:] - starts[:-1] == WIDTH)
    run_length = np.bincount(np.cumsum(~linked) - 1)
    first = np.flatnonzero(~linked)
    run_start, run_text = starts[first], texts[first]
    run_end = run_start + (run_length - 1) * WIDTH  # its last window's start
    by_start = np.argsort(run_start, kind="stable")
    ends_before = np.full(len(run_end), -1, np.int64)  # texts lie end to end, in order, so one running max serves
    ends_before[1:] = np.maximum.accumulate(run_end[by_start])[:-1]
    added = np.maximum(run_end[by_start] - np.maximum(run_start[by_start] - 1, ends_before), 0)
    runs.found = np.bincount(run_text[by_start], weights=added, minlength=count).astype(np.int64)
    best = np.lexsort((run_start, -run_length, run_text))
    leading = best[np.flatnonzero(np.diff(run_text[best], prepend=-1))]
    runs.longest[run_text[leading]] = run_length[leading]
    runs.longest_start[run_text[leading]] = run_start[leading] - text_starts[run_text[leading]]
    runs.hits = np.bincount(texts, minlength=count).astype(np.int64)
    return runs


@dataclass
class Portrait:
    """The bit array and its header; `add` inserts texts' build windows, `match` looks texts up at every offset."""

    header: dict[str, Any]
    bits: np.ndarray  # uint8, header["bits"] / 8 of them
    _bits_set: int | None = field(default=None, repr=False)

    @classmethod
    def empty(cls, capacity: int, target_fpr: float = DEFAULT_FPR, seed: int = 0) -> Portrait:
        if not 0 < target_fpr < 1:
            raise PortraitError(f"target_fpr must be between 0 and 1, got {target_fpr}")
        bits, hashes = size_for(capacity, target_fpr)
        header = {"format": FORMAT, "version": VERSION, "scheme": SCHEME, "capacity": max(int(capacity), 1),
                  "target_fpr": target_fpr, "bits": bits, "hashes": hashes, "seed": seed, "seeds": derived_seeds(seed),
                  "ngrams": 0, "texts": 0, "characters": 0, "sources": []}
        return cls(header, np.zeros(bits // 8, np.uint8))

    @property
    def hashes(self) -> int:
        return int(self.header["hashes"])

    def double_hashes(self, window_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """h1 and an odd h2 per window; bit i is (h1 + i·h2) mod m (Kirsch–Mitzenmacher double hashing)."""
        first_seed, second_seed = (np.uint64(int(seed, 16)) for seed in self.header["seeds"])
        return mixed(window_values, first_seed), mixed(window_values, second_seed) | np.uint64(1)

    def insert(self, window_values: np.ndarray) -> None:
        first, step = self.double_hashes(window_values)
        bits = np.uint64(self.header["bits"])
        with np.errstate(over="ignore"):
            for index in range(self.hashes):
                positions = (first + np.uint64(index) * step) % bits
                np.bitwise_or.at(self.bits, (positions >> np.uint64(3)).astype(np.intp),
                                 np.uint8(1) << (positions & np.uint64(7)).astype(np.uint8))
        self.header["ngrams"] += len(window_values)
        self._bits_set = None

    def contains(self, window_values: np.ndarray) -> np.ndarray:
        """Membership of each window hash, a cache-sized block at a time. A small block (one query) reads all k bits
        in one gather; a large one probes a bit at a time and a window leaves at its first unset bit (most do
        within two probes), so the filter is read about twice per window instead of k times."""
        present = np.zeros(len(window_values), bool)
        bits = np.uint64(self.header["bits"])
        with np.errstate(over="ignore"):
            for block_start in range(0, len(window_values), PROBE_BLOCK):
                first, step = self.double_hashes(window_values[block_start: block_start + PROBE_BLOCK])
                if len(first) <= ALL_PROBES_AT_ONCE:
                    positions = (first[:, None] + step[:, None] * np.arange(self.hashes, dtype=np.uint64)) % bits
                    found = self.bit_at(positions).all(axis=1)
                    present[block_start: block_start + len(found)] = found
                    continue
                alive = np.arange(len(first))
                for index in range(self.hashes):
                    hit = self.bit_at((first + np.uint64(index) * step) % bits).astype(bool)
                    alive, first, step = alive[hit], first[hit], step[hit]
                    if not len(alive):
                        break
                present[block_start + alive] = True
        return present

    def bit_at(self, positions: np.ndarray) -> np.ndarray:
        """1 where the filter's bit at each position is set, else 0 (uint8)."""
        return (self.bits[(positions >> np.uint64(3)).astype(np.intp)] >> (positions & np.uint64(7)).astype(np.uint8)) & np.uint8(1)

    def add(self, texts: pa.Array | pa.ChunkedArray) -> None:
        """Insert every text's non-overlapping WIDTH-character windows (normalised)."""
        normalised = normalise(texts)
        counts = character_counts(normalised)
        for group, group_counts in text_groups(normalised, counts):
            starts = aligned_starts(group_counts)
            if len(starts):
                self.insert(window_hashes(code_points(group), starts))
        self.header["texts"] += len(counts)
        self.header["characters"] += int(counts.sum())

    def match(self, texts: pa.Array | pa.ChunkedArray | list[str]) -> Matches:
        """Look up each text's windows at every offset, so text is found wherever it sat in a document."""
        normalised = normalise(pa.array(texts, pa.large_string()) if isinstance(texts, list) else texts)
        counts = character_counts(normalised)
        parts = []
        for group, group_counts in text_groups(normalised, counts):
            starts, text_of = every_start(group_counts)
            present = self.contains(window_hashes(code_points(group), starts))
            parts.append(find_runs(starts[present], text_of[present], np.cumsum(group_counts) - group_counts))
        joined = {name: np.concatenate([getattr(part, name) for part in parts]) if parts else np.zeros(0, np.int64)
                  for name in ("hits", "found", "longest", "longest_start")}
        return Matches(counts, np.maximum(counts - WIDTH + 1, 0), **joined)

    def match_text(self, text: str) -> dict[str, Any]:
        """One text's answer, with the longest matched span's (normalised) text."""
        matches = self.match([text])
        start, length = int(matches.longest_start[0]), int(matches.longest_characters[0])
        normalised = normalise(pa.array([text], pa.large_string()))[0].as_py()
        return {"characters": int(matches.characters[0]), "windows": int(matches.windows[0]),
                "hits": int(matches.hits[0]), "found": int(matches.found[0]), "share": float(matches.share[0]),
                "longest_span": {"characters": length, "start": start,
                                 "text": normalised[start: start + length] if start >= 0 else ""},
                "expected_chance_hits": int(matches.windows[0]) * self.fill_fpr}

    # ------------------------------------------------------------ header figures

    @property
    def bits_set(self) -> int:
        if self._bits_set is None:
            self._bits_set = int(np.bitwise_count(self.bits).sum(dtype=np.int64))
        return self._bits_set

    @property
    def fill_fpr(self) -> float:
        """(bits set / m)^k: the false-positive rate at the fill reached (a repeated window sets no new bit)."""
        return (self.bits_set / self.header["bits"]) ** self.hashes

    def summary(self) -> dict[str, Any]:
        """Sizes, n-grams, hashes and both false-positive rates: what a report or a manifest records."""
        header = self.header
        return {"bits": header["bits"], "bytes": header["bits"] // 8, "hashes": header["hashes"],
                "ngrams": header["ngrams"], "capacity": header["capacity"], "texts": header["texts"],
                "characters": header["characters"], "target_fpr": header["target_fpr"],
                "design_fpr": design_fpr(header["bits"], header["hashes"], header["ngrams"]),
                "fill_fpr": self.fill_fpr, "bits_set": self.bits_set}

    # ------------------------------------------------------------ merging

    def merge(self, other: Portrait, other_name: str = "the other sketch") -> Portrait:
        """Bitwise OR: the sketch one build over both inputs would give, byte for byte."""
        for name in MERGE_FIELDS:
            if self.header.get(name) != other.header.get(name):
                raise PortraitError(f"{other_name}: {name} is {json.dumps(other.header.get(name))}, expected "
                                    f"{json.dumps(self.header.get(name))}; only sketches built alike merge")
        header = dict(self.header)
        for name in ("ngrams", "texts", "characters"):
            header[name] = self.header[name] + other.header[name]
        header["sources"] = [*self.header["sources"], *other.header["sources"]]
        return Portrait(header, self.bits | other.bits)

    # ------------------------------------------------------------ the file

    def header_bytes(self) -> bytes:
        """The header as written: sorted keys, derived figures included, and a checksum over it and the bits."""
        header = {key: value for key, value in self.header.items() if key not in DERIVED_FIELDS}
        header |= {"bits_set": self.bits_set, "design_fpr": design_fpr(header["bits"], header["hashes"], header["ngrams"])}
        digest = xxhash.xxh3_128(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
        digest.update(self.bits)
        header["checksum"] = "xxh3_128:" + digest.hexdigest()
        return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()

    @property
    def checksum(self) -> str:
        """What the file's header records: xxh3-128 of the header without it and of the bits."""
        return json.loads(self.header_bytes())["checksum"]

    def write(self, path: str | Path | Location) -> dict[str, Any]:
        """Magic, header length (uint64 LE), JSON header, bit array; written whole or not at all. Returns the header."""
        header = self.header_bytes()
        with atomic_path(as_location(path)) as temporary, open(temporary, "wb") as handle:
            handle.write(MAGIC + len(header).to_bytes(8, "little") + header)
            handle.write(memoryview(self.bits))
        return json.loads(header)


def read_portrait(path: str | Path | Location) -> Portrait:
    """A sketch file, refused in one line if it is not one, is cut short or fails its checksum."""
    location = as_location(path)
    try:
        with location.open("rb") as handle:
            start = handle.read(len(MAGIC) + 8)
            if start[:len(MAGIC)] != MAGIC:
                raise PortraitError(f"{path}: not a Gristmill portrait (no {FORMAT} magic bytes)")
            try:
                header = json.loads(handle.read(int.from_bytes(start[len(MAGIC):], "little")))
                size = int(header["bits"]) // 8
                if size <= 0 or header["bits"] % 64:
                    raise ValueError("bits")
            except (ValueError, TypeError, KeyError):
                raise PortraitError(f"{path}: damaged header (not the JSON a sketch starts with)") from None
            if header.get("format") != FORMAT or header.get("version") != VERSION:
                raise PortraitError(f"{path}: format {header.get('format')!r} version {header.get('version')!r}, "
                                    f"expected {FORMAT!r} version {VERSION}")
            bits = np.empty(size, np.uint8)
            read = handle.readinto(memoryview(bits))
            if read != size or handle.read(1):
                raise PortraitError(f"{path}: the header promises {size} bytes of bits, the file holds "
                                    f"{'fewer' if read != size else 'more'} (cut short or damaged)")
    except FileNotFoundError:
        raise PortraitError(f"{path}: no such sketch file") from None
    except IsADirectoryError:
        raise PortraitError(f"{path}: a directory, not a sketch file") from None
    portrait = Portrait({key: value for key, value in header.items() if key not in DERIVED_FIELDS}, bits)
    if portrait.checksum != header.get("checksum"):
        raise PortraitError(f"{path}: checksum differs from its header (damaged)")
    return portrait


# ---------------------------------------------------------------- building from datasets


@dataclass
class TextSource:
    """One input of a build: how it is named in the header, and its texts as a re-readable stream of batches."""

    name: str
    batches: Callable[[], Iterator[pa.Array]]
    config_hash: str | None = None


def dataset_source(path: str | Path | Location, column: str = "text") -> TextSource:
    """A Gristmill dataset's texts, shard by shard (each shard checked before it is read)."""
    dataset = Dataset(path)
    try:
        manifest = dataset.manifest()
    except DatasetError as error:
        raise PortraitError(str(error)) from None
    if column not in manifest.schema.names:
        raise PortraitError(f"{path}: no column {column!r} (columns: {', '.join(manifest.schema.names)})")
    return TextSource(as_location(path).name, lambda: (batch.column(column) for batch in dataset.iter_batches([column])),
                      manifest.config_hash)


def build_portrait(sources: list[TextSource], target_fpr: float = DEFAULT_FPR, capacity: int | None = None,
                   seed: int = 0) -> Portrait:
    """Size the filter (from `capacity`, or a first counting pass over the texts), then insert every source."""
    if capacity is None:
        capacity = sum(count_windows(source.batches()) for source in sources)
    portrait = Portrait.empty(capacity, target_fpr, seed)
    for source in sources:
        before = portrait.header["texts"]
        for texts in source.batches():
            portrait.add(texts)
        portrait.header["sources"].append({"name": source.name, "config_hash": source.config_hash,
                                           "texts": portrait.header["texts"] - before})
    return portrait
