"""A finished dataset written straight from generated documents, committed shard by shard as a source task commits
them (data, empty reject ledger, shard record, then the manifest), so stages read it with verified reads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from gristmill.pipeline.engine.dataset import REJECT_SCHEMA, Dataset, ParquetShardWriter, ShardRecord, config_digest
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA


def write_source_dataset(directory: Path, shards: Iterable[list[pa.RecordBatch | pa.Table]], source: str,
                         config: dict) -> Dataset:
    """Each item of `shards` becomes one shard; `source` and `config` are recorded as the stage that made it."""
    dataset = Dataset(directory)
    dataset.prepare()
    records = []
    for index, parts in enumerate(shards):
        name = f"part-{index:05d}"
        data = ParquetShardWriter(dataset.shard_path(name), DOCUMENT_SCHEMA)
        ledger = ParquetShardWriter(dataset.reject_path(name), REJECT_SCHEMA)
        for part in parts:
            data.write(part)
        rows = sum(part.num_rows for part in parts)
        ledger_bytes, ledger_checksum = ledger.commit()
        size, checksum = data.commit()
        records.append(ShardRecord(name=name, source=source, rows=rows, documents_out=rows, bytes=size,
                                   checksum=checksum, rows_in=rows, ledger_bytes=ledger_bytes,
                                   ledger_checksum=ledger_checksum))
        dataset.record_path(name).write_text(records[-1].model_dump_json(indent=2))
    dataset.finalize(source, config, config_digest(source, config), [], records, DOCUMENT_SCHEMA)
    return dataset
