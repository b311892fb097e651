"""A full check of one dataset directory, for `gristmill verify`: every byte against a recorded checksum, and every
count against the files it counts. Readers check only the shards they open; this checks everything, all problems.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gristmill.pipeline.engine.dataset import (
    REJECTS_DIR,
    SHARDS_DIR,
    Dataset,
    DatasetError,
    Manifest,
    ShardRecord,
    check_file,
    iter_parquet_batches,
    open_parquet,
)
from gristmill.pipeline.engine.files import Location
from gristmill.pipeline.engine.runner import RUN_MARKER


@dataclass
class DatasetCheck:
    path: Location
    complete: bool = False
    shards: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": "dataset", "ok": not self.problems, "complete": self.complete,
                "shards": self.shards, "rows": self.rows, "problems": self.problems, "notes": self.notes}


def verify_dataset(path: str | Location) -> DatasetCheck:
    """Checksums and sizes of data and ledger files, Parquet rows against shard records, ledger reasons against
    the recorded rejects, record files and manifest against each other, the manifest's totals, and stray shards."""
    dataset = Dataset(path)
    check = DatasetCheck(dataset.path, complete=dataset.is_complete)
    try:
        records = dataset.records()
    except DatasetError as error:
        check.problems.append(str(error))
        return check
    check.shards, check.rows = len(records), sum(record.rows for record in records)
    if check.complete:
        manifest = dataset.manifest()
        check.problems += manifest_problems(dataset, manifest)
        if manifest.checksum is None or any(record.ledger_checksum is None for record in records):
            check.notes.append("made before manifests and ledgers carried checksums: those are not covered")
    else:
        check.notes.append("incomplete: no manifest yet; shards checked against their records")
    for record in records:
        check.problems += shard_problems(dataset, record, check.complete)
    if check.complete:  # an unfinished run may have committed data whose record is not written yet
        check.problems += stray_files(dataset, {record.name for record in records})
    return check


def manifest_problems(dataset: Dataset, manifest: Manifest) -> list[str]:
    """Totals that must be the sums of the shard records, and the run marker's config hash."""
    records = manifest.shards
    where = dataset.manifest_path
    problems = []
    rejected: Counter[str] = Counter()
    stats: Counter[str] = Counter()
    for record in records:
        rejected.update(record.rejected)
        stats.update(record.stats)
    sums = {"rows": sum(record.rows for record in records), "bytes": sum(record.bytes for record in records),
            "rows_in": sum(record.rows_in for record in records), "rejected": dict(rejected), "stats": dict(stats)}
    for key, total in sums.items():
        if getattr(manifest, key) != total:
            problems.append(f"{where}: {key} is {getattr(manifest, key)}, its shard records add up to {total}")
    names = [record.name for record in records]
    if len(set(names)) != len(names):
        problems.append(f"{where}: lists a shard twice")
    marker = dataset.path / RUN_MARKER
    if marker.exists():
        try:
            marked = json.loads(marker.read_text()).get("config_hash")
        except (ValueError, UnicodeDecodeError, AttributeError):
            marked = "unreadable"
        if marked != manifest.config_hash:
            problems.append(f"{marker}: config hash {marked}, the manifest's {manifest.config_hash}")
    return problems


def shard_problems(dataset: Dataset, record: ShardRecord, complete: bool) -> list[str]:
    """Every problem of one shard: its files against the record, then what they hold against what it counts."""
    problems = []
    data, ledger = dataset.shard_path(record.name), dataset.reject_path(record.name)
    checks = [(data, record.bytes, record.checksum)]
    if record.ledger_checksum is not None:
        checks.append((ledger, record.ledger_bytes, record.ledger_checksum))
    elif not ledger.exists():
        problems.append(f"{ledger}: missing (its shard record lists it)")
    for path, size, checksum in checks:
        try:
            check_file(path, size, checksum)
        except DatasetError as error:
            problems.append(str(error))
    if complete:
        try:
            dataset.check_record_file(record)
        except DatasetError as error:
            problems.append(str(error))
    if record.rows_in != record.documents_out + record.rows_rejected:
        problems.append(f"{dataset.record_path(record.name)}: {record.rows_in} in != {record.documents_out} out "
                        f"+ {record.rows_rejected} rejected")
    if problems:  # a damaged file's contents cannot be counted
        return problems
    try:
        with open_parquet(data) as parquet:
            rows = parquet.metadata.num_rows
        reasons = ledger_reasons(ledger)
    except (OSError, pa.ArrowException) as error:  # checksum matches yet unreadable: written damaged
        return [f"{data.parent}/{record.name}: unreadable although its checksum matches: {error}"]
    if rows != record.rows:
        problems.append(f"{data}: {rows} rows, its shard record says {record.rows}")
    if reasons != Counter(record.rejected):
        problems.append(f"{ledger}: rejects {dict(sorted(reasons.items()))}, "
                        f"its shard record says {dict(sorted(record.rejected.items()))}")
    return problems


def ledger_reasons(ledger: Location) -> Counter[str]:
    reasons: Counter[str] = Counter()
    for batch in iter_parquet_batches(ledger, columns=["reason"]):
        counts = pc.value_counts(pc.fill_null(batch.column(0), ""))
        reasons.update(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))
    return reasons


def stray_files(dataset: Dataset, names: set[str]) -> list[str]:
    """Shards no record lists: `DIR/*.parquet` readers (polars, duckdb) would read them as part of the dataset."""
    expected = {dataset.shard_path(name) for name in names} | {dataset.reject_path(name) for name in names}
    expected |= {dataset.record_path(name) for name in names}
    found = [*dataset.path.glob("*.parquet"), *(dataset.path / REJECTS_DIR).glob("*.parquet"),
             *(dataset.path / SHARDS_DIR).glob("*.json")]
    return [f"{path}: not listed by the manifest" for path in sorted(found, key=str) if path not in expected and not path.name.startswith(".")]
