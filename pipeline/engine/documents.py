"""The document schema every text stage reads and writes, and the rule for stable document ids.

Stages add annotation columns to this schema; they never drop these ones.
"""

from __future__ import annotations

import xxhash
import pyarrow as pa

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("url", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("source", pa.string()),
        pa.field("fetch_time", pa.timestamp("us", tz="UTC")),
        pa.field("lang", pa.string()),
        pa.field("lang_score", pa.float32()),
    ]
)


def document_id(*parts: str) -> str:
    """A deterministic id from whatever identifies a record (URL and payload digest, record id...)."""
    return xxhash.xxh3_128_hexdigest("\x1f".join(parts).encode())
