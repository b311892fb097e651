"""`decontaminate`: find benchmark items inside documents by word n-gram overlap, then drop or flag them.

Training on a benchmark's items inflates its scores; this is the 13-gram check of GPT-3 and OLMo. A shipped
sketch (`gristmill portrait`) of a benchmark, or of training data, can stand in for the benchmark's files.
"""

from __future__ import annotations

import functools
import json
import re
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
from gristmill.stages.dedup.portrait import SUFFIX as SKETCH_SUFFIX
from gristmill.stages.dedup.portrait import WIDTH, Portrait, PortraitError, read_portrait
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


class SketchSource(BaseModel):
    """A portrait (`gristmill portrait build`) to check documents against, e.g. one shipped with a benchmark."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Name used in rejection details, flags and the report.")
    path: str = Field(description="The sketch file (a path or an fsspec URL).")

    @model_validator(mode="before")
    @classmethod
    def parse_path_or_json(cls, value: Any) -> Any:
        """A bare path is named after its file; on the command line a JSON object {name, path} works too."""
        if isinstance(value, str) and value.lstrip().startswith("{"):
            return json.loads(value)
        if isinstance(value, str):
            return {"name": re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(value).name.removesuffix(SKETCH_SUFFIX)) or "sketch",
                    "path": value}
        return value


class DecontaminateConfig(StageConfig):
    benchmarks: list[BenchmarkSource] = Field(
        default_factory=list,
        description='Benchmarks to check against, each {name, paths, fields}; on the command line one JSON object '
        'per --benchmarks, e.g. \'{"name": "gsm8k", "paths": ["gsm8k.jsonl"], "fields": ["question", "answer"]}\'.',
    )
    sketches: list[SketchSource] = Field(
        default_factory=list,
        description="Portraits to check against (a benchmark's, or a training set's to check a benchmark), each a "
        'path or {name, path}; a document is contaminated by one when sketch_min_span or sketch_min_share is met.',
    )
    sketch_min_span: int = Field(
        2 * WIDTH, ge=WIDTH, description="Characters of a document, found whole in a sketch, that make it contaminated "
        "(the longest run of 50-character windows found back to back; 100 = two windows, so chance needs two false "
        "positives in a row).",
    )
    sketch_min_share: float | None = Field(
        None, gt=0, le=1, description="Also contaminated when this share of a document's windows is found in a sketch.",
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

    @model_validator(mode="after")
    def something_to_check(self) -> DecontaminateConfig:
        if not self.benchmarks and not self.sketches:
            raise ValueError("give benchmarks or sketches to check against")
        names = [source.name for source in [*self.benchmarks, *self.sketches]]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark and sketch names must be unique together, got {names}")
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
    manifest: dict[str, Any] = {"ngram_words": config.ngram_words, "lengths": sorted(lengths), "benchmarks": entries}
    if config.sketches:
        manifest["sketches"] = [sketch_entry(sketch) for sketch in config.sketches]
    write_json_atomic(index_dir / INDEX_MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def sketch_entry(sketch: SketchSource) -> dict[str, Any]:
    """A sketch checked whole once, before any task; tasks load exactly this content (its checksum) or fail."""
    try:
        portrait = read_portrait(sketch.path)
    except PortraitError as error:
        raise ValueError(f"sketch {sketch.name!r}: {error}") from None
    summary = portrait.summary()
    return {"name": sketch.name, "path": sketch.path, "checksum": portrait.checksum,
            **{key: summary[key] for key in ("bytes", "hashes", "ngrams", "texts", "design_fpr", "fill_fpr")}}


@functools.lru_cache(maxsize=4)
def load_sketch(path: str, checksum: str) -> Portrait:
    """Once per worker and sketch content."""
    portrait = read_portrait(path)
    if portrait.checksum != checksum:
        raise PortraitError(f"{path}: changed since the run checked it (checksum differs); run again")
    return portrait


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
        manifest_text = (as_location(global_view) / INDEX_MANIFEST).read_text()
        manifest = json.loads(manifest_text)
        self.index = load_index(global_view, manifest_text) if manifest["benchmarks"] else None
        self.sketches = [(entry["name"], load_sketch(entry["path"], entry["checksum"]))
                         for entry in manifest.get("sketches", [])]
        self.source_names = [*(self.index.names if self.index else []), *(name for name, _ in self.sketches)]

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        if self.config.mode == "drop":
            return input_schema
        for name in (BENCHMARK_COLUMN, NGRAMS_COLUMN):
            if name in input_schema.names:
                input_schema = input_schema.remove(input_schema.get_field_index(name))
        return input_schema.append(pa.field(BENCHMARK_COLUMN, pa.string())).append(pa.field(NGRAMS_COLUMN, pa.int32()))

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        best, best_hits, contaminated, sketch_details = self.find_contamination(batch.column("text"))
        names = pc.if_else(pa.array(contaminated), pc.take(pa.array(self.source_names, pa.string()), pa.array(best)),
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
            if sketch_details is not None:
                details = pc.binary_join_element_wise(details, pc.fill_null(sketch_details, ""), "")
            result = BatchResult.split(batch, reasons, details)
        result.stats = self.hits_per_benchmark(best[contaminated], best_hits[contaminated])
        return result

    def find_contamination(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array | None]:
        """Per document: the source that contaminates it (an index into `source_names`), its hits, whether it is
        contaminated, and for sketch matches the span and share for the ledger detail.

        Benchmarks decide first, as before sketches existed (most hits, ties to the first listed); a document
        clean of them may still be contaminated by a sketch, the one with most windows found."""
        rows = len(texts)
        best, best_hits, contaminated = np.zeros(rows, np.int64), np.zeros(rows, np.int64), np.zeros(rows, bool)
        if self.index is not None:
            hits = self.index.count_hits(texts)
            best = np.argmax(hits, axis=0)  # ties go to the benchmark listed first
            best_hits = hits[best, np.arange(rows)]
            contaminated = best_hits >= self.config.min_hits
        if not self.sketches:
            return best, best_hits, contaminated, None
        found, span, share = (np.zeros((len(self.sketches), rows), dtype) for dtype in (np.int64, np.int64, float))
        for row, (_, sketch) in enumerate(self.sketches):
            matches = sketch.match(texts)
            found[row], span[row], share[row] = matches.found, matches.longest_characters, matches.share
        over = span >= self.config.sketch_min_span
        if self.config.sketch_min_share is not None:
            over |= share >= self.config.sketch_min_share
        by_sketch = (~contaminated) & over.any(axis=0)
        chosen = np.argmax(np.where(over, found, -1), axis=0)
        columns = np.arange(rows)
        best = np.where(by_sketch, len(self.source_names) - len(self.sketches) + chosen, best)
        best_hits = np.where(by_sketch, found[chosen, columns], best_hits)
        details = pc.if_else(pa.array(by_sketch), pc.binary_join_element_wise(
            " span=", pc.cast(pa.array(span[chosen, columns]), pa.string()),
            " share=", pc.cast(pa.array(np.round(share[chosen, columns], 3)), pa.string()), ""), pa.scalar(None, pa.string()))
        return best, best_hits, contaminated | by_sketch, details

    def hits_per_benchmark(self, benchmarks: np.ndarray, hits: np.ndarray) -> dict[str, int]:
        """Contaminated documents and their n-gram hits per benchmark; summed into the manifest's `stats`."""
        documents = np.bincount(benchmarks, minlength=len(self.source_names))
        ngram_hits = np.bincount(benchmarks, weights=hits, minlength=len(self.source_names))
        return {
            **{f"contaminated.{name}": int(count) for name, count in zip(self.source_names, documents)},
            **{f"ngram_hits.{name}": int(count) for name, count in zip(self.source_names, ngram_hits)},
        }


def decontamination_report(dataset_dir: str | Path) -> dict[str, Any]:
    """Contaminated documents and their n-gram hits per benchmark (and per sketch: windows found), from a
    decontaminate dataset's manifest.

    A document counts once, for the benchmark with most hits. Index facts (items, n-grams,
    items too short to check; a sketch's size and rates) are added when the run's `_work/` folder is still there.
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
        for benchmark in [*config.benchmarks, *config.sketches]
    }
    index_manifest = dataset.path / WORK_DIR / INDEX_DIR / INDEX_MANIFEST
    if index_manifest.exists():
        index = json.loads(index_manifest.read_text())
        for entry in index["benchmarks"]:
            if entry["name"] in benchmarks:
                benchmarks[entry["name"]]["index"] = {key: entry[key] for key in (
                    "items", "items_unusable", "items_too_short", "items_matched_whole", "ngrams")}
        for entry in index.get("sketches", []):
            if entry["name"] in benchmarks:
                benchmarks[entry["name"]]["sketch"] = {key: value for key, value in entry.items() if key != "name"}
    sketch_thresholds = ({"sketch_min_span": config.sketch_min_span, "sketch_min_share": config.sketch_min_share}
                         if config.sketches else {})
    return {
        "mode": config.mode,
        "ngram_words": config.ngram_words,
        "min_hits": config.min_hits,
        **sketch_thresholds,
        "documents": manifest.rows_in,
        "contaminated": sum(entry["documents"] for entry in benchmarks.values()),
        "benchmarks": benchmarks,
    }
