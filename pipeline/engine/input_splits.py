"""Large input files split into several tasks: a task's source names a file and, optionally, a piece of it.

A piece is written `FILE#KIND=START-END` (row groups of a Parquet file, or a byte range of a JSONL or WARC
file cut at record boundaries), so a task still carries one picklable string and shard names stay in order.
"""

from __future__ import annotations

import re

PIECE = re.compile(r"#(?P<kind>row_groups|bytes)=(?P<start>\d+)-(?P<end>\d+)$")


def source_file(source: str) -> str:
    """The file a task's source reads, without its piece."""
    match = PIECE.search(source)
    return source[: match.start()] if match else source
