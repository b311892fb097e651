"""`decontaminate`: find benchmark items inside documents by word n-gram overlap, then drop or flag them.

Training on a benchmark's items inflates its scores; this is the 13-gram check of GPT-3 and OLMo.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from gristmill.pipeline.engine.dataset import (
    TEMP_MARK,
    TEMPORARY_NAME,
    Dataset,
    DatasetError,
    open_parquet,
    write_json_atomic,
)
from gristmill.pipeline.engine.files import (
    Location,
    as_location,
    atomic_path,
    expand_globs,
)
from gristmill.pipeline.engine.runner import WORK_DIR
from gristmill.pipeline.engine.stage import (
    BatchResult,
    MapStage,
    ReduceContext,
    StageConfig,
    register,
)
from gristmill.stages.ingest.read_text import open_text
from gristmill.stages.words import whitespace_words
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

INDEX_DIR = "decontamination_index"
INDEX_MANIFEST = "index.json"
REASON = "contaminated"
BENCHMARK_COLUMN = "contamination_benchmark"
NGRAMS_COLUMN = "contamination_ngrams"
PUNCTUATION = r"[\p{P}\p{S}]+"
# Odd, so every power is invertible mod 2^64 and no word position is multiplied away.
MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


class BenchmarkSource(BaseModel):
    """One benchmark: its files and the fields that make up an item's text."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Name used in rejection details, flags and the report.")
    paths: list[str] = Field(min_length=1, description="JSONL (plain, .gz, .zst) or Parquet files or globs of items.")
    fields: list[str] = Field(["text"], min_length=1, description="Fields joined, in order, into an item's text.")

    @model_validator(mode="before")
    @classmethod
    def parse_command_line_json(cls, value: Any) -> Any:
        """`--benchmarks` on the command line gives each benchmark as one JSON object."""
        return json.loads(value) if isinstance(value, str) else value


class DecontaminateConfig(StageConfig):
    benchmarks: list[BenchmarkSource] = Field(
        min_length=1,
        description='Benchmarks to check against, each {name, paths, fields}; on the command line one JSON object '
        'per --benchmarks, e.g. \'{"name": "gsm8k", "paths": ["gsm8k.jsonl"], "fields": ["question", "answer"]}\'.',
    )
    ngram_words: int = Field(13, ge=1, description="Words per n-gram (13 as in GPT-3 and OLMo).")
    min_item_words: int = Field(
        8, ge=1, description="Items with fewer words are not checked; a shorter item than ngram_words is one whole n-gram."
    )
    min_hits: int = Field(1, ge=1, description="Distinct matching n-grams from one benchmark that make a document contaminated.")
    mode: Literal["drop", "flag"] = Field(
        "drop", description="drop: reject contaminated documents; flag: keep all and add contamination columns."
    )

    @field_validator("benchmarks")
    @classmethod
    def names_are_unique(cls, benchmarks: list[BenchmarkSource]) -> list[BenchmarkSource]:
        names = [benchmark.name for benchmark in benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names must be unique, got {names}")
        return benchmarks

    @model_validator(mode="after")
    def short_items_fit(self) -> DecontaminateConfig:
        if self.min_item_words > self.ngram_words:
            raise ValueError("min_item_words must be at most ngram_words")
        return self


# ---------------------------------------------------------------- hashing


@dataclass
class Words:
    """Every text's normalised words as xxh3 hashes, flattened, with each text's word offsets."""

    hashes: np.ndarray  # uint64, one per word
    offsets: np.ndarray  # int64, len(texts) + 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def normalise(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lowercase and delete punctuation and symbols; words are then the runs of non-whitespace."""
    return pc.replace_substring_regex(pc.utf8_lower(pc.fill_null(texts, "")), PUNCTUATION, "")


def hash_words(texts: pa.Array | pa.ChunkedArray) -> Words:
    """Hash each distinct word once with xxh3 and gather; the splitting is all Arrow."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    split = whitespace_words(normalise(texts))
    words = pc.list_flatten(split)
    text_of_word = np.repeat(np.arange(len(texts)), pc.list_value_length(split).to_numpy(zero_copy_only=False))
    real = pc.greater(pc.binary_length(words), 0)  # splitting "" or " a" yields empty words
    words = pc.filter(words, real)
    text_of_word = text_of_word[real.to_numpy(zero_copy_only=False)]
    encoded = pc.dictionary_encode(words)
    vocabulary = encoded.dictionary.cast(pa.binary()).to_pylist()
    vocabulary_hashes = np.fromiter(map(xxhash.xxh3_64_intdigest, vocabulary), np.uint64, len(vocabulary))
    offsets = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(np.bincount(text_of_word, minlength=len(texts)), out=offsets[1:])
    return Words(vocabulary_hashes[encoded.indices.to_numpy(zero_copy_only=False)], offsets)


def prefix_hashes(word_hashes: np.ndarray, longest: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (k, h) for k = 1..longest, h[s] hashing the k words from position s (a polynomial in the words).

    `h` is overwritten by the next step; windows may cross text boundaries, the caller selects.
    """
    rolling = np.zeros(len(word_hashes), np.uint64)
    for length in range(1, min(longest, len(word_hashes)) + 1):
        windows = rolling[: len(word_hashes) - length + 1]
        windows *= MULTIPLIER
        windows += word_hashes[length - 1 :]
        yield length, windows


def document_ngrams(words: Words, lengths: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every window of each wanted length inside each text, and the text each comes from."""
    text_of_word = np.repeat(np.arange(len(words.counts)), words.counts)
    text_end = words.offsets[1:][text_of_word]
    positions = np.arange(len(text_of_word))
    hashes, texts = [], []
    for length, windows in prefix_hashes(words.hashes, max(lengths, default=0)):
        if length in lengths:
            inside = positions[: len(windows)] + length <= text_end[: len(windows)]
            hashes.append(windows[inside])
            texts.append(text_of_word[: len(windows)][inside])
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(texts)


def item_ngrams(words: Words, ngram_words: int, min_item_words: int) -> np.ndarray:
    """An item's n-grams; an item shorter than n words (but at least min_item_words) is one whole n-gram."""
    short_items = (words.counts >= min_item_words) & (words.counts < ngram_words)
    hashes = [document_ngrams(words, (ngram_words,))[0]]
    for length, windows in prefix_hashes(words.hashes, ngram_words - 1):
        whole = short_items & (words.counts == length)
        hashes.append(windows[words.offsets[:-1][whole]])
    return sorted_unique(np.concatenate(hashes))


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """`np.unique` by sorting: numpy 2's hash-based `np.unique` is ~50x slower on random uint64."""
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if len(ordered) else ordered


# ---------------------------------------------------------------- the index


def item_text(record: Any, fields: list[str]) -> str | None:
    """The item's fields joined by spaces; lists (answer choices) are joined too; None when nothing is there."""
    if not isinstance(record, dict):
        return None
    parts = []
    for name in fields:
        value = record.get(name)
        values = value if isinstance(value, list) else [value]
        parts.extend(str(part) for part in values if isinstance(part, (str, int, float)))
    text = " ".join(parts)
    return text if text.strip() else None


def read_items(path: str, fields: list[str]) -> tuple[list[str], int]:
    """An item file's texts, and how many records were malformed or had none of the fields."""
    texts, unusable = [], 0
    if path.endswith(".parquet"):
        with open_parquet(path) as parquet:
            missing = [name for name in fields if name not in parquet.schema_arrow.names]
            if missing:
                raise ValueError(f"{path}: no field {missing[0]!r} (fields: {', '.join(parquet.schema_arrow.names)})")
            records: Iterator[Any] = (row for batch in parquet.iter_batches(columns=fields) for row in batch.to_pylist())
            texts = [item_text(record, fields) for record in records]
    else:
        with open_text(path) as lines:
            for line in lines:
                if line.strip():
                    try:
                        texts.append(item_text(json.loads(line), fields))
                    except json.JSONDecodeError:
                        unusable += 1
    usable = [text for text in texts if text is not None]
    return usable, unusable + len(texts) - len(usable)


def benchmark_files(benchmark: BenchmarkSource) -> list[str]:
    files = []
    for pattern in benchmark.paths:
        matches = expand_globs([pattern])
        if not matches:
            raise FileNotFoundError(2, "no file matches", pattern)
        files.extend(matches)
    return files


def save_array_atomic(path: Location, array: np.ndarray) -> None:
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, array)


def load_array(path: Location) -> np.ndarray:
    with path.open("rb") as handle:
        return np.load(handle)


def build_index(config: DecontaminateConfig, index_dir: Location) -> dict[str, Any]:
    """Hash every benchmark's n-grams into a sorted uint64 array per benchmark; return the index manifest."""
    index_dir.mkdir(parents=True, exist_ok=True)
    for leftover in index_dir.glob(f".*{TEMP_MARK}*"):  # from a build that was killed
        if TEMPORARY_NAME.fullmatch(leftover.name):
            leftover.unlink(missing_ok=True)
    lengths = {config.ngram_words}
    entries = []
    for ordinal, benchmark in enumerate(config.benchmarks):
        texts, unusable = [], 0
        for path in benchmark_files(benchmark):
            file_texts, file_unusable = read_items(path, benchmark.fields)
            texts.extend(file_texts)
            unusable += file_unusable
        if not texts:
            raise ValueError(f"benchmark {benchmark.name!r}: no item has any of the fields {benchmark.fields}")
        words = hash_words(pa.array(texts, pa.string()))
        ngrams = item_ngrams(words, config.ngram_words, config.min_item_words)
        if not len(ngrams):
            raise ValueError(f"benchmark {benchmark.name!r}: no item has {config.min_item_words} words or more")
        counts = words.counts
        short = counts[(counts >= config.min_item_words) & (counts < config.ngram_words)]
        lengths.update(short.tolist())
        file_name = f"{ordinal:03d}.npy"
        save_array_atomic(index_dir / file_name, ngrams)
        entries.append({
            "name": benchmark.name,
            "file": file_name,
            "checksum": xxhash.xxh3_64_hexdigest(ngrams.tobytes()),
            "items": len(texts),
            "items_unusable": unusable,
            "items_too_short": int(np.sum(counts < config.min_item_words)),
            "items_matched_whole": len(short),
            "ngrams": len(ngrams),
        })
    manifest = {"ngram_words": config.ngram_words, "lengths": sorted(lengths), "benchmarks": entries}
    write_json_atomic(index_dir / INDEX_MANIFEST, json.dumps(manifest, indent=2))
    return manifest


@dataclass
class BenchmarkIndex:
    """Per-benchmark sorted n-gram hashes, with a bitmap over their union that turns most lookups away early."""

    names: list[str]
    lengths: tuple[int, ...]
    ngrams: list[np.ndarray]
    bitmap: np.ndarray  # bool, indexed by a hash's top bits
    shift: np.uint64

    @classmethod
    def build(cls, names: list[str], lengths: tuple[int, ...], ngrams: list[np.ndarray]) -> BenchmarkIndex:
        union = sorted_unique(np.concatenate(ngrams))
        bits = int(np.clip(np.ceil(np.log2(max(len(union), 1) * 16)), 10, 26))  # ~6% of misses pass, up to 4M n-grams
        bitmap = np.zeros(1 << bits, bool)
        shift = np.uint64(64 - bits)
        bitmap[union >> shift] = True
        return cls(names, lengths, ngrams, bitmap, shift)

    def count_hits(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Distinct n-grams of each text found in each benchmark: shape (benchmarks, texts)."""
        hits = np.zeros((len(self.names), len(texts)), np.int64)
        hashes, text_of_hash = document_ngrams(hash_words(texts), self.lengths)
        maybe = self.bitmap[hashes >> self.shift]
        hashes, text_of_hash = hashes[maybe], text_of_hash[maybe]
        for row, benchmark_ngrams in enumerate(self.ngrams):
            found = contains(benchmark_ngrams, hashes)
            found_texts, found_hashes = text_of_hash[found], hashes[found]
            order = np.lexsort((found_hashes, found_texts))
            found_texts, found_hashes = found_texts[order], found_hashes[order]
            distinct = np.ones(len(found_texts), bool)
            distinct[1:] = (found_texts[1:] != found_texts[:-1]) | (found_hashes[1:] != found_hashes[:-1])
            hits[row] = np.bincount(found_texts[distinct], minlength=len(texts))
        return hits


def contains(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    positions = np.minimum(np.searchsorted(sorted_values, queries), len(sorted_values) - 1)
    return sorted_values[positions] == queries


@functools.lru_cache(maxsize=4)
def load_index(index_dir: str, manifest_text: str) -> BenchmarkIndex:
    """Once per worker and index content (the manifest holds every array's checksum)."""
    manifest = json.loads(manifest_text)
    entries = manifest["benchmarks"]
    ngrams = [load_array(as_location(index_dir) / entry["file"]) for entry in entries]
    return BenchmarkIndex.build([entry["name"] for entry in entries], tuple(manifest["lengths"]), ngrams)


# ---------------------------------------------------------------- the stage


@register
class Decontaminate(MapStage):
    """Drop (or flag) documents sharing word n-grams with benchmark items (GPT-3/OLMo 13-gram overlap)."""

    name = "decontaminate"
    Config = DecontaminateConfig
    needs_global_view = True

    def reduce(self, context: ReduceContext) -> str:
        index_dir = context.work_dir / INDEX_DIR
        build_index(self.config, index_dir)
        return str(index_dir)

    def bind(self, global_view: str, shard_name: str) -> None:
        super().bind(global_view, shard_name)
        self.index = load_index(global_view, (as_location(global_view) / INDEX_MANIFEST).read_text())

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        if self.config.mode == "drop":
            return input_schema
        for name in (BENCHMARK_COLUMN, NGRAMS_COLUMN):
            if name in input_schema.names:
                input_schema = input_schema.remove(input_schema.get_field_index(name))
        return input_schema.append(pa.field(BENCHMARK_COLUMN, pa.string())).append(pa.field(NGRAMS_COLUMN, pa.int32()))

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        hits = self.index.count_hits(batch.column("text"))
        best = np.argmax(hits, axis=0)  # ties go to the benchmark listed first
        best_hits = hits[best, np.arange(batch.num_rows)]
        contaminated = best_hits >= self.config.min_hits
        names = pc.if_else(pa.array(contaminated), pc.take(pa.array(self.index.names, pa.string()), pa.array(best)),
                           pa.nulls(batch.num_rows, pa.string()))
        if self.config.mode == "flag":
            table = pa.Table.from_batches([batch])
            table = table.drop_columns([name for name in (BENCHMARK_COLUMN, NGRAMS_COLUMN) if name in table.column_names])
            table = table.append_column(BENCHMARK_COLUMN, names)
            table = table.append_column(NGRAMS_COLUMN, pa.array(best_hits.astype(np.int32)))
            result = BatchResult.keep_all(table)
        else:
            reasons = pc.if_else(pa.array(contaminated), REASON, pa.nulls(batch.num_rows, pa.string()))
            details = pc.binary_join_element_wise("benchmark=", names, " ngrams=", pc.cast(pa.array(best_hits), pa.string()), "")
            result = BatchResult.split(batch, reasons, details)
        result.stats = self.hits_per_benchmark(best[contaminated], best_hits[contaminated])
        return result

    def hits_per_benchmark(self, benchmarks: np.ndarray, hits: np.ndarray) -> dict[str, int]:
        """Contaminated documents and their n-gram hits per benchmark; summed into the manifest's `stats`."""
        documents = np.bincount(benchmarks, minlength=len(self.index.names))
        ngram_hits = np.bincount(benchmarks, weights=hits, minlength=len(self.index.names))
        return {
            **{f"contaminated.{name}": int(count) for name, count in zip(self.index.names, documents)},
            **{f"ngram_hits.{name}": int(count) for name, count in zip(self.index.names, ngram_hits)},
        }


def decontamination_report(dataset_dir: str | Path) -> dict[str, Any]:
    """Contaminated documents and their n-gram hits per benchmark, from a decontaminate dataset's manifest.

    A document counts once, for the benchmark with most hits. Index facts (items, n-grams,
    items too short to check) are added when the run's `_work/` folder is still there.
    """
    dataset = Dataset(dataset_dir)
    manifest = dataset.manifest()
    if manifest.stage != Decontaminate.name:
        raise DatasetError(f"{dataset.path}: made by stage {manifest.stage!r}, not {Decontaminate.name!r}")
    config = DecontaminateConfig.model_validate(manifest.config)
    benchmarks: dict[str, dict[str, Any]] = {
        benchmark.name: {
            "documents": int(manifest.stats.get(f"contaminated.{benchmark.name}", 0)),
            "ngram_hits": int(manifest.stats.get(f"ngram_hits.{benchmark.name}", 0)),
        }
        for benchmark in config.benchmarks
    }
    index_manifest = dataset.path / WORK_DIR / INDEX_DIR / INDEX_MANIFEST
    if index_manifest.exists():
        for entry in json.loads(index_manifest.read_text())["benchmarks"]:
            if entry["name"] in benchmarks:
                benchmarks[entry["name"]]["index"] = {key: entry[key] for key in (
                    "items", "items_unusable", "items_too_short", "items_matched_whole", "ngrams")}
    return {
        "mode": config.mode,
        "ngram_words": config.ngram_words,
        "min_hits": config.min_hits,
        "documents": manifest.rows_in,
        "contaminated": sum(entry["documents"] for entry in benchmarks.values()),
        "benchmarks": benchmarks,
    }
