"""Export a decomposed dataset to shuffled Megatron buckets (.bin/.idx, a sidecar each, stats.json) and verify one.

Export is the global step after `decompose`: it shuffles every bucket out of core with a
seeded key per sequence, so the bytes depend on the data and the seed only, never on memory.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from gristmill.pipeline.engine.dataset import (
    Dataset,
    DatasetError,
    file_checksum,
    iter_parquet_batches,
    read_parquet_table,
    write_json_atomic,
)
from gristmill.pipeline.engine.files import as_location, is_remote, upload_tree
from gristmill.pipeline.engine.ownership import OWNER_MARKER, claim
from gristmill.pipeline.tokens.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    token_dtype,
)
from gristmill.stages.dedup.portrait import PortraitError, TextSource, build_portrait, read_portrait
from gristmill.stages.tokens.tokenization import (
    LoadedTokenizer,
    TokenizerError,
    load_tokenizer,
    tokenizer_record,
)

SIDECAR_FORMAT = "gristmill.tokens"
STATS_FORMAT = "gristmill.tokens.stats"
STATS_FILE = "stats.json"
SPILL_DIR = "_spill"
PORTRAIT_FILE = "portrait.bloom"
DECODE_BATCH = 1024  # token runs decoded per call
MAX_PARTITIONS = 128  # per bucket: each is an open spill file during pass two
# Arrow bytes a spilled token costs while a partition is sorted (values, the sorted copy, the written view).
BYTES_PER_SPILLED_TOKEN = 12
PIECE_COLUMNS = ("document_id", "chunk_index", "token_start", "segment", "bucket", "num_tokens", "dropped_tokens", "tokens")
SORT_KEYS = [("key", "ascending"), ("first_document_id", "ascending"), ("first_chunk", "ascending"),
             ("segment", "ascending")]


class ExportError(Exception):
    """An export cannot start or its input is inconsistent; the message names the path."""


def bucket_name(bucket: int) -> str:
    return f"bucket-{bucket:02d}"


def context_sum(lengths: np.ndarray) -> int:
    """Σ l(l−1)/2: token pairs that attend within one document segment (the paper's context measure)."""
    lengths = lengths.astype(np.int64)
    return int(np.sum(lengths * (lengths - 1) // 2))


@dataclass
class BucketTally:
    sequences: int = 0
    segments: int = 0
    tokens: int = 0
    context_pairs: int = 0
    sources: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict[str, Any]:
        return {"sequences": self.sequences, "segments": self.segments, "tokens": self.tokens,
                "average_context_length": round(self.context_pairs / self.tokens, 3) if self.tokens else 0.0,
                "sources": dict(sorted(self.sources.items()))}


def complete_sequences(dataset: Dataset) -> Any:
    """Tables of whole training sequences: a packed sequence split across read batches is held back and joined."""
    for path in dataset.verified_shards():
        pending: pa.Table | None = None
        for batch in iter_parquet_batches(path):
            table = pa.Table.from_batches([batch])
            if pending is not None:
                table = pa.concat_tables([pending, table])
            starts = np.flatnonzero(table.column("segment").to_numpy() == 0)
            cut = int(starts[-1]) if len(starts) else 0
            if cut:
                yield table.slice(0, cut)
            pending = table.slice(cut)
        if pending is not None and pending.num_rows:
            yield pending


def sequence_ids(segment: np.ndarray) -> np.ndarray:
    """For each row, the row that starts its sequence."""
    starts = np.flatnonzero(segment == 0)
    return starts[np.searchsorted(starts, np.arange(len(segment)), side="right") - 1]


def sequence_keys(seed: int, document_ids: list[str], chunk_indices: list[int]) -> np.ndarray:
    """The shuffle key of a sequence: a 64-bit hash of (seed, its first document id, that piece's index)."""
    return np.fromiter(
        (xxhash.xxh3_64_intdigest(f"{seed}\x1f{document}\x1f{chunk}".encode())
         for document, chunk in zip(document_ids, chunk_indices)),
        dtype=np.uint64, count=len(document_ids),
    )


def rejected_document_tokens(dataset: Dataset) -> int:
    """Tokens of documents `decompose` rejected as shorter than the smallest bucket (from their ledger detail)."""
    total = 0
    for batch in dataset.iter_rejects():
        short = pc.equal(batch.column("reason"), "shorter_than_min_bucket")
        details = pc.filter(batch.column("detail"), short)
        counts = pc.struct_field(pc.extract_regex(details, r"num_tokens=(?P<n>\d+)"), [0])
        total += pc.sum(pc.cast(counts, pa.int64())).as_py() or 0
    return total


def open_decomposed(path: str | Path) -> tuple[Dataset, dict[str, Any], list[str]]:
    dataset = Dataset(path)
    try:
        manifest = dataset.manifest()
    except DatasetError as error:
        raise ExportError(str(error)) from None
    schema = manifest.schema
    missing = [name for name in PIECE_COLUMNS if name not in schema.names]
    if missing:
        raise ExportError(f"{path}: not a decomposed dataset (no {', '.join(missing)}; run decompose first)")
    tokenizer_used = tokenizer_record(schema)
    if tokenizer_used is None:
        raise ExportError(f"{path}: schema records no tokenizer (made by the tokenize stage?)")
    extra_columns = [name for name in schema.names if name not in PIECE_COLUMNS]
    return dataset, tokenizer_used, extra_columns


def partition_bits(tokens: int, memory_bytes: int) -> int:
    partitions = max(1, -(-tokens * BYTES_PER_SPILLED_TOKEN // memory_bytes))
    return min(int(np.ceil(np.log2(partitions))), int(np.log2(MAX_PARTITIONS)))


def export_buckets(source: str | Path, output: str | Path, seed: int = 0, memory_bytes: int = 1 << 30,
                   portrait_fpr: float | None = None) -> dict[str, Any]:
    """Write one shuffled Megatron dataset per bucket, a sidecar each and stats.json; returns the stats.
    With `portrait_fpr`, also a sketch of the exported text (portrait.bloom), recorded in stats.json.

    Out-of-core shuffle: every sequence gets key = xxh3_64(seed, first document id, piece index);
    pass one counts each bucket's tokens, pass two spills sequences into 2^b key-range partitions
    per bucket (b from the memory budget), pass three sorts each partition by key and appends it.
    The order is the global key order whatever the partition count, so memory never changes bytes.
    """
    destination = as_location(output)
    if is_remote(destination):  # built on local disk (it is read by memory map anyway), uploaded with stats.json last
        if destination.exists() and any(path.name != OWNER_MARKER for path in destination.iterdir()):
            raise ExportError(f"{output}: not empty; export into a new directory")
        with tempfile.TemporaryDirectory(prefix="gristmill-export-") as staging:
            stats = export_buckets(source, staging, seed, memory_bytes, portrait_fpr)
            upload_tree(Path(staging), destination, last=STATS_FILE)
        return stats
    dataset, tokenizer, extra_columns = open_decomposed(source)
    manifest = dataset.manifest()
    output = Path(output)
    if output.exists() and any(path.name not in (SPILL_DIR, OWNER_MARKER) for path in output.iterdir()):
        raise ExportError(f"{output}: not empty; export into a new directory")
    claim(output)
    started = time.perf_counter()

    tallies: dict[int, BucketTally] = defaultdict(BucketTally)
    dropped_remainders = 0
    has_source = "source" in extra_columns
    for batch in dataset.iter_batches(columns=["bucket", "segment", "num_tokens", "dropped_tokens"]
                                      + (["source"] if has_source else [])):
        buckets = batch.column("bucket").to_numpy()
        lengths = batch.column("num_tokens").to_numpy().astype(np.int64)
        starts = batch.column("segment").to_numpy() == 0
        dropped_remainders += int(batch.column("dropped_tokens").to_numpy().sum(dtype=np.int64))
        sources = batch.column("source").fill_null("").to_numpy(zero_copy_only=False) if has_source else None
        for bucket in np.unique(buckets).tolist():
            rows = buckets == bucket
            tally = tallies[bucket]
            tally.sequences += int(starts[rows].sum())
            tally.segments += int(rows.sum())
            tally.tokens += int(lengths[rows].sum())
            tally.context_pairs += context_sum(lengths[rows])
            if sources is not None:
                for name, tokens in _tokens_by_source(sources[rows], lengths[rows]):
                    tally.sources[name] += tokens

    bits = {bucket: partition_bits(tally.tokens, memory_bytes) for bucket, tally in tallies.items()}
    spill_root = output / SPILL_DIR
    shutil.rmtree(spill_root, ignore_errors=True)
    spill_root.mkdir()
    spill_writers: dict[tuple[int, int], pa.ipc.RecordBatchStreamWriter] = {}
    spill_schema = None
    try:
        for table in complete_sequences(dataset):
            segment = table.column("segment").to_numpy()
            first = sequence_ids(segment)
            document_ids = table.column("document_id").to_pylist()
            chunks = table.column("chunk_index").to_numpy()
            starts = np.flatnonzero(segment == 0)
            keys = sequence_keys(seed, [document_ids[row] for row in starts.tolist()], chunks[starts].tolist())
            row_keys = keys[np.searchsorted(starts, first)]
            table = table.append_column("key", pa.array(row_keys))
            table = table.append_column("first_document_id", pc.take(table.column("document_id"), pa.array(first)))
            table = table.append_column("first_chunk", pa.array(chunks[first]))
            table = table.drop_columns(["dropped_tokens"])
            spill_schema = table.schema
            buckets = table.column("bucket").to_numpy()
            for bucket in np.unique(buckets).tolist():
                shift = np.uint64(64 - bits[bucket]) if bits[bucket] else None
                partition = (row_keys >> shift).astype(np.int64) if shift is not None else np.zeros(len(row_keys), np.int64)
                for part in np.unique(partition[buckets == bucket]).tolist():
                    rows = np.flatnonzero((buckets == bucket) & (partition == part))
                    writer = spill_writers.get((bucket, part))
                    if writer is None:
                        path = spill_root / f"{bucket_name(bucket)}-{part:04d}.arrow"
                        writer = spill_writers[(bucket, part)] = pa.ipc.new_stream(str(path), spill_schema)
                    writer.write_table(table.take(pa.array(rows)))
    finally:
        for writer in spill_writers.values():
            writer.close()

    dtype = token_dtype(int(tokenizer["vocab_size"]))
    sidecars = {}
    for bucket in sorted(tallies):
        sidecars[bucket] = write_bucket(output, bucket, spill_root, bits[bucket], dtype, extra_columns)
        sidecars[bucket] |= {
            "format": SIDECAR_FORMAT, "version": 1, "bucket": bucket,
            "capacity": (1 << bucket) + 1,
            "mode": manifest.config.get("mode", "decompose"),
            "tokenizer": tokenizer, "seed": seed,
            "input": {"dataset": str(dataset.path), "config_hash": manifest.config_hash},
            "sources": dict(sorted(tallies[bucket].sources.items())),
            "average_context_length": tallies[bucket].as_dict()["average_context_length"],
        }
        write_json_atomic(output / f"{bucket_name(bucket)}.json", json.dumps(sidecars[bucket], indent=2, sort_keys=True))
    shutil.rmtree(spill_root, ignore_errors=True)

    kept_tokens = sum(tally.tokens for tally in tallies.values())
    dropped_documents = rejected_document_tokens(dataset)
    by_source: dict[str, int] = defaultdict(int)
    for tally in tallies.values():
        for name, tokens in tally.sources.items():
            by_source[name] += tokens
    context_pairs = sum(tally.context_pairs for tally in tallies.values())
    portrait = {"portrait": write_portrait(dataset, tokenizer, output, portrait_fpr)} if portrait_fpr else {}
    stats = {
        "format": STATS_FORMAT, "version": 1, "seed": seed, "tokenizer": tokenizer,
        "input": {"dataset": str(dataset.path), "config_hash": manifest.config_hash},
        "mode": manifest.config.get("mode", "decompose"),
        "document_tokens": kept_tokens + dropped_remainders + dropped_documents,
        "tokens": kept_tokens,
        "dropped_tokens": {"remainders": dropped_remainders, "short_documents": dropped_documents,
                           "total": dropped_remainders + dropped_documents},
        "average_context_length": round(context_pairs / kept_tokens, 3) if kept_tokens else 0.0,
        "buckets": {str(bucket): tallies[bucket].as_dict() for bucket in sorted(tallies)},
        "sources": dict(sorted(by_source.items())),
        **portrait,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json_atomic(output / STATS_FILE, json.dumps(stats, indent=2, sort_keys=True))
    return stats


def write_portrait(dataset: Dataset, tokenizer: dict[str, Any], output: Path, target_fpr: float) -> dict[str, Any]:
    """Sketch the exported text beside the buckets (a first pass counts its windows, a second inserts them) and
    return what stats.json records of it."""
    started = time.perf_counter()
    source, text_from = exported_text(dataset, tokenizer)
    try:
        portrait = build_portrait([source], target_fpr)
    except PortraitError as error:
        raise ExportError(str(error)) from None
    path = output / PORTRAIT_FILE
    portrait.write(path)
    summary = portrait.summary()
    return {"path": PORTRAIT_FILE, "bytes": path.stat().st_size, "checksum": file_checksum(path), "text_from": text_from,
            **{key: summary[key] for key in ("target_fpr", "design_fpr", "fill_fpr", "ngrams", "bits", "hashes", "texts",
                                             "characters")},
            "seconds": round(time.perf_counter() - started, 3)}


def exported_text(dataset: Dataset, tokenizer: dict[str, Any]) -> tuple[TextSource, str]:
    """The documents' text: their `text` column when decompose kept it (once per document, on its first piece),
    else their kept pieces decoded with the recorded tokenizer, so the sketch holds what the buckets hold."""
    manifest = dataset.manifest()
    name = dataset.path.name
    if "text" in manifest.schema.names:
        def first_pieces() -> Any:
            for batch in dataset.iter_batches(columns=["token_start", "text"]):
                yield pc.filter(batch.column("text"), pc.equal(batch.column("token_start"), 0))
        return TextSource(name, first_pieces, manifest.config_hash), "text column"
    try:
        loaded = load_tokenizer(tokenizer["path"], tokenizer["eos_token"])
    except TokenizerError as error:
        raise ExportError(f"portrait: the exported text is decoded with the recorded tokenizer: {error}") from None
    if loaded.fingerprint != tokenizer["fingerprint"]:
        raise ExportError(f"portrait: tokenizer at {tokenizer['path']} has changed since tokenize (fingerprint differs)")
    return TextSource(name, lambda: decoded_pieces(dataset, loaded), manifest.config_hash), "decoded tokens"


def decoded_pieces(dataset: Dataset, tokenizer: LoadedTokenizer) -> Any:
    """Each document's kept pieces, shard by shard (decompose keeps a document's pieces in one shard), joined
    where one piece continues the last and decoded; a gap (a dropped remainder) starts a new text."""
    for path in dataset.verified_shards():
        table = read_parquet_table(path, columns=["document_id", "token_start", "num_tokens", "tokens"])
        table = table.sort_by([("document_id", "ascending"), ("token_start", "ascending")])
        if not table.num_rows:
            continue
        documents = table.column("document_id").combine_chunks()
        starts = table.column("token_start").to_numpy().astype(np.int64)
        lengths = table.column("num_tokens").to_numpy().astype(np.int64)
        same_document = pc.equal(documents[1:], documents[:-1]).to_numpy(zero_copy_only=False)
        continues = np.zeros(len(starts), bool)
        continues[1:] = same_document & (starts[1:] == starts[:-1] + lengths[:-1])
        token_offsets = np.concatenate([[0], np.cumsum(lengths)])
        run_starts = token_offsets[np.flatnonzero(~continues)]
        run_ends = np.append(run_starts[1:], token_offsets[-1])
        tokens = pc.list_flatten(table.column("tokens")).to_numpy().astype(np.int64)
        for first in range(0, len(run_starts), DECODE_BATCH):
            runs = [tokens[start:end].tolist() for start, end in
                    zip(run_starts[first:first + DECODE_BATCH], run_ends[first:first + DECODE_BATCH])]
            yield pa.array(tokenizer.tokenizer.decode_batch(runs, skip_special_tokens=True), pa.large_string())


def _tokens_by_source(sources: np.ndarray, lengths: np.ndarray) -> list[tuple[str, int]]:
    names, inverse = np.unique(sources, return_inverse=True)
    return list(zip(names.tolist(), np.bincount(inverse, weights=lengths).astype(np.int64).tolist()))


class EvenRowGroupWriter:
    """Parquet writer whose row groups are cut every `rows` rows, so the bytes do not depend on how writes were split."""

    def __init__(self, path: Path, rows: int = 65_536):
        self.path, self.rows = path, rows
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.rows:
            self._flush(self.rows)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self._pending)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._writer.write_table(table.slice(0, rows), row_group_size=self.rows)
        rest = table.slice(rows)
        self._pending, self._pending_rows = [rest], rest.num_rows

    def close(self) -> None:
        if self._pending_rows or (self._writer is None and self._pending):
            self._flush(self._pending_rows)
        if self._writer is not None:
            self._writer.close()


def write_bucket(output: Path, bucket: int, spill_root: Path, bits: int, dtype: type[np.number],
                 extra_columns: list[str]) -> dict[str, Any]:
    """Sort each spilled key-range partition of one bucket and append it to the bucket's .bin/.idx and sequence table."""
    prefix = output / bucket_name(bucket)
    sequences_path = output / f"{bucket_name(bucket)}.sequences.parquet"
    sequences_writer = EvenRowGroupWriter(sequences_path)
    writer = IndexedDatasetWriter(prefix, dtype)
    segments = 0
    try:
        for part in range(1 << bits):
            path = spill_root / f"{bucket_name(bucket)}-{part:04d}.arrow"
            if not path.exists():
                continue
            with pa.ipc.open_stream(str(path)) as reader:
                table = reader.read_all().sort_by(SORT_KEYS)
            path.unlink()
            segment = table.column("segment").to_numpy()
            starts = np.flatnonzero(segment == 0)
            lengths = table.column("num_tokens").to_numpy()
            tokens = pc.list_flatten(table.column("tokens")).to_numpy(zero_copy_only=False)
            writer.add_batch(tokens, lengths, np.diff(np.r_[starts, len(segment)]))
            segments += len(segment)
            summary = table.take(pa.array(starts)).select(["document_id", "chunk_index", "token_start", *extra_columns])
            summary = summary.append_column("segments", pa.array(np.diff(np.r_[starts, len(segment)]).astype(np.int32)))
            summary = summary.append_column("num_tokens", pa.array(np.add.reduceat(lengths.astype(np.int64), starts)
                                                                   .astype(np.int32) if len(starts) else np.zeros(0, np.int32)))
            sequences_writer.write(summary)
        written = writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        sequences_writer.close()
    return {
        "prefix": prefix.name, "dtype": written.dtype, "sequences": written.documents, "segments": written.sequences,
        "tokens": written.tokens, "checksums": {"bin": written.bin_checksum, "idx": written.idx_checksum,
                                                 "sequences": file_checksum(sequences_path)},
    }


@dataclass
class BucketCheck:
    name: str
    problems: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def verify_export(directory: str | Path, samples: int = 3, seed: int = 0) -> list[BucketCheck]:
    """Check every bucket of an export: index ↔ data, counts and checksums against the sidecar, token range,
    sequence lengths, and decode a few sequences with the recorded tokenizer."""
    directory = Path(directory)
    sidecars = sorted(path for path in directory.glob("*.json") if path.name != STATS_FILE and path.name != OWNER_MARKER)
    checks = []
    bucket_tokens = 0
    tokenizers_seen: dict[str, Any] = {}
    for sidecar_path in sidecars:
        try:
            sidecar = json.loads(sidecar_path.read_text())
        except ValueError as error:
            checks.append(BucketCheck(sidecar_path.name, [f"unreadable sidecar: {error}"]))
            continue
        if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
            continue
        check = BucketCheck(sidecar["prefix"])
        checks.append(check)
        bucket_tokens += sidecar["tokens"]
        check_bucket(directory, sidecar, check)
        record = sidecar["tokenizer"]
        if record["fingerprint"] not in tokenizers_seen:
            tokenizers_seen[record["fingerprint"]] = open_recorded_tokenizer(record, check)
        tokenizer = tokenizers_seen[record["fingerprint"]]
        if tokenizer is not None and not check.problems:
            dataset = IndexedDataset(directory / sidecar["prefix"])
            rng = np.random.default_rng(seed)
            for index in sorted(rng.choice(dataset.num_documents, min(samples, dataset.num_documents), replace=False).tolist()):
                text = tokenizer.decode(dataset.document(index))
                check.samples.append(f"sequence {index}: {text[:100]!r}")
    if not checks:
        return [BucketCheck(str(directory), [f"no {SIDECAR_FORMAT} sidecars found"])]
    stats_path = directory / STATS_FILE
    if stats_path.exists():
        stats = json.loads(stats_path.read_text())
        if stats.get("tokens") != bucket_tokens:
            checks[0].problems.append(f"{STATS_FILE} counts {stats.get('tokens')} tokens, the buckets {bucket_tokens}")
        if "portrait" in stats:
            checks[0].problems.extend(portrait_problems(directory, stats["portrait"]))
    return checks


def portrait_problems(directory: Path, record: dict[str, Any]) -> list[str]:
    """The sketch stats.json records: present, the recorded bytes, and whole by its own checksum."""
    path = directory / record["path"]
    if not path.exists():
        return [f"{record['path']} is missing ({STATS_FILE} records a portrait)"]
    if file_checksum(path) != record["checksum"]:
        return [f"{record['path']}: checksum differs from {STATS_FILE}"]
    try:
        read_portrait(path)
    except PortraitError as error:
        return [str(error)]
    return []


def check_bucket(directory: Path, sidecar: dict[str, Any], check: BucketCheck) -> None:
    prefix = directory / sidecar["prefix"]
    try:
        dataset = IndexedDataset(prefix)
    except IndexedDatasetError as error:
        check.problems.append(str(error))
        return
    check.problems.extend(dataset.problems())
    expected = {"dtype": dataset.dtype.name, "segments": len(dataset), "sequences": dataset.num_documents,
                "tokens": dataset.num_tokens}
    for key, actual in expected.items():
        if sidecar[key] != actual:
            check.problems.append(f"{key}: sidecar says {sidecar[key]}, data has {actual}")
    sequences_path = directory / f"{sidecar['prefix']}.sequences.parquet"
    files = {"bin": Path(f"{prefix}.bin"), "idx": Path(f"{prefix}.idx"), "sequences": sequences_path}
    for key, path in files.items():
        if not path.exists():
            check.problems.append(f"{path.name} is missing")
        elif file_checksum(path) != sidecar["checksums"][key]:
            check.problems.append(f"{path.name}: checksum differs from the sidecar")
    if check.problems:
        return
    table = pq.read_table(sequences_path, columns=["segments", "num_tokens"])
    if table.num_rows != dataset.num_documents:
        check.problems.append(f"{sequences_path.name} has {table.num_rows} rows for {dataset.num_documents} sequences")
        return
    document_index = dataset.document_indices
    sequence_tokens = np.add.reduceat(dataset.sequence_lengths.astype(np.int64), document_index[:-1]) if len(dataset) else np.zeros(0)
    if not np.array_equal(sequence_tokens, table.column("num_tokens").to_numpy()) or not np.array_equal(
            np.diff(document_index), table.column("segments").to_numpy()):
        check.problems.append(f"{sequences_path.name} disagrees with the index on sequence sizes")
    capacity = sidecar["capacity"]
    if len(sequence_tokens) and sequence_tokens.max() > capacity:
        check.problems.append(f"a sequence holds {int(sequence_tokens.max())} tokens, more than {capacity}")
    if sidecar["mode"] == "decompose":
        singles = np.diff(document_index) == 1
        if np.any(sequence_tokens[singles] != capacity):
            check.problems.append(f"a single-document sequence is not {capacity} tokens long")
    vocab_size = sidecar["tokenizer"]["vocab_size"]
    for start in range(0, dataset.num_tokens, 1 << 24):
        chunk = dataset.tokens[start:start + (1 << 24)]
        if chunk.size and (int(chunk.max()) >= vocab_size or int(chunk.min()) < 0):
            check.problems.append(f"token ids outside the vocabulary of {vocab_size}")
            break


def open_recorded_tokenizer(record: dict[str, Any], check: BucketCheck):
    """The tokenizer a sidecar names, if it is still where it was and still the same; else a note or a problem."""
    try:
        tokenizer = load_tokenizer(record["path"], record["eos_token"])
    except TokenizerError as error:
        check.notes.append(f"samples not decoded: {error}")
        return None
    if tokenizer.fingerprint != record["fingerprint"]:
        check.problems.append(f"tokenizer at {record['path']} has changed since export (fingerprint differs)")
        return None
    return tokenizer
