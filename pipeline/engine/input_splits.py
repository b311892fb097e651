"""Large input files split into several tasks: a task's source names a file and, optionally, a piece of it.

A piece is written `FILE#KIND=START-END` (row groups of a Parquet file, or a byte range of a JSONL or WARC
file cut at record boundaries), so a task still carries one picklable string and shard names stay in order.
Ranges are half-open: `#row_groups=4-8` reads row groups 4 to 7, and `#bytes=0-1000` owns every line (or
WARC record) that starts at bytes 0 to 999, so pieces are cut by arithmetic alone and need no coordination.
"""

from __future__ import annotations

import io
import itertools
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import fsspec
import numpy as np
import pyarrow.parquet as pq

PIECE = re.compile(r"#(?P<kind>row_groups|bytes)=(?P<start>\d+)-(?P<end>\d+)$")
ROW_GROUPS = "row_groups"
BYTES = "bytes"
COUNT_CHUNK_BYTES = 8 << 20
READ_CHUNK_BYTES = 1 << 16
NEWLINE = 10
# Files whose line-number checkpoints a process keeps (one per piece end it has seen), so a worker handed
# several pieces of one file counts the newlines before each piece once, not once per piece.
CHECKPOINT_FILES = 64
# Files planned at once: sizing a remote file is a round trip, and a crawl lists tens of thousands.
PLANNING_THREADS = 16


@dataclass(frozen=True)
class Piece:
    """A half-open range of a file's row groups or bytes."""

    kind: Literal["row_groups", "bytes"]
    start: int
    end: int


def source_file(source: str) -> str:
    """The file a task's source reads, without its piece."""
    match = PIECE.search(source)
    return source[: match.start()] if match else source


def parse_source(source: str) -> tuple[str, Piece | None]:
    """A task's source as its file and its piece (None for the whole file)."""
    match = PIECE.search(source)
    if match is None:
        return source, None
    piece = Piece(match["kind"], int(match["start"]), int(match["end"]))  # type: ignore[arg-type]
    if piece.start >= piece.end:
        raise ValueError(f"{source}: a piece must start before it ends")
    return source[: match.start()], piece


def piece_source(path: str, piece: Piece) -> str:
    return f"{path}#{piece.kind}={piece.start}-{piece.end}"


def byte_ranges(size: int, target_bytes: int) -> list[tuple[int, int]]:
    """`size` bytes cut into the fewest near-equal ranges of at most `target_bytes` each (never an empty one)."""
    count = max(1, -(-size // target_bytes))
    cuts = [size * index // count for index in range(count + 1)]
    return [(start, end) for start, end in itertools.pairwise(cuts) if start < end]


def row_group_ranges(sizes: list[int], target_bytes: int) -> list[tuple[int, int]]:
    """Consecutive row groups gathered greedily until the next would pass `target_bytes`; a group larger than
    the target is a range of its own."""
    ranges: list[tuple[int, int]] = []
    start, total = 0, 0
    for index, size in enumerate(sizes):
        if index > start and total + size > target_bytes:
            ranges.append((start, index))
            start, total = index, 0
        total += size
    if sizes:
        ranges.append((start, len(sizes)))
    return ranges


def is_url(path: str) -> bool:
    return "://" in path


def open_file(path: str) -> BinaryIO:
    """A local file, or a URL (s3://, https://, memory://) through fsspec, as seekable bytes."""
    if not is_url(path):
        return open(path, "rb")
    return fsspec.open(path, "rb").open()


def file_size(path: str, storage_options: dict | None = None) -> int | None:
    """The file's size in bytes, or None where it cannot be had (missing, or a server that does not say)."""
    try:
        if not is_url(path):
            return os.path.getsize(path)
        filesystem, inner = fsspec.core.url_to_fs(path, **(storage_options or {}))
        size = filesystem.size(inner)
        return None if size is None else int(size)
    except Exception:  # noqa: BLE001 - a file that cannot be sized is read whole; its reader reports the problem
        return None


def split_by_bytes(path: str, target_bytes: int, storage_options: dict | None = None) -> list[str]:
    """A line-based file larger than `target_bytes` as byte-range pieces; otherwise the file itself."""
    size = file_size(path, storage_options)
    if size is None or size <= target_bytes:
        return [path]
    return [piece_source(path, Piece(BYTES, start, end)) for start, end in byte_ranges(size, target_bytes)]


def plan_each(paths: list[str], plan: Callable[[str], list[str]]) -> list[str]:
    """Every file's pieces, in file order; files are planned a few at a time, as each may wait on a server."""
    if len(paths) < 2:
        return [piece for path in paths for piece in plan(path)]
    with ThreadPoolExecutor(min(PLANNING_THREADS, len(paths))) as pool:
        return [piece for pieces in pool.map(plan, paths) for piece in pieces]


def find_in_range(stream: BinaryIO, start: int, end: int, marker: bytes, accept: Callable[[int], bool],
                  skip: int = 0) -> int | None:
    """The first offset in [start, end) where `marker` occurs (the offset `skip` bytes into it) and `accept`
    holds, or None. Bytes are read in bounded chunks; `accept` may move the stream."""
    offset = max(0, start - skip)
    while offset < end:
        stream.seek(offset)
        chunk = stream.read(READ_CHUNK_BYTES + len(marker) - 1)
        found = chunk.find(marker)
        while found >= 0:
            candidate = offset + found + skip
            if candidate >= end:
                return None
            if candidate >= start and accept(candidate):
                return candidate
            found = chunk.find(marker, found + 1)
        if len(chunk) < READ_CHUNK_BYTES + len(marker) - 1:
            return None
        offset += READ_CHUNK_BYTES
    return None


def compressed_size(row_group: Any) -> int:
    """A row group's bytes in the file: its column chunks as stored (its `total_byte_size` is uncompressed)."""
    return sum(row_group.column(index).total_compressed_size for index in range(row_group.num_columns))


def split_parquet(path: str, target_bytes: int) -> list[str]:
    """A Parquet file larger than `target_bytes` as pieces of consecutive row groups (sized by their compressed
    bytes, from the footer); a file with one row group or an unreadable footer stays whole."""
    size = file_size(path)
    if size is None or size <= target_bytes:
        return [path]
    try:
        with open_file(path) as stream:
            metadata = pq.read_metadata(stream)
    except Exception:  # noqa: BLE001 - the reader rejects a damaged file with its reason
        return [path]
    sizes = [compressed_size(metadata.row_group(index)) for index in range(metadata.num_row_groups)]
    ranges = row_group_ranges(sizes, target_bytes)
    if len(ranges) < 2:
        return [path]
    return [piece_source(path, Piece(ROW_GROUPS, start, end)) for start, end in ranges]


def count_newlines(stream: BinaryIO, start: int, end: int) -> list[tuple[int, int]]:
    """Newlines in bytes [start, end) of a seekable stream, read in bounded chunks and counted by numpy: the
    running count after each chunk, as (offset, newlines from `start` to offset); empty for an empty range."""
    stream.seek(start)
    buffer = bytearray(min(COUNT_CHUNK_BYTES, max(end - start, 1)))
    view = memoryview(buffer)
    running: list[tuple[int, int]] = []
    offset, total = start, 0
    while offset < end:
        read = stream.readinto(view[: min(len(buffer), end - offset)])
        if not read:
            break
        total += int(np.count_nonzero(np.frombuffer(buffer, np.uint8, read) == NEWLINE))
        offset += read
        running.append((offset, total))
    return running


class LineCheckpoints:
    """Known (byte offset, newlines before it) per file, kept for the life of a process: the ends of the pieces
    it read and every chunk it counted, so no byte of a file is counted twice for line numbers."""

    def __init__(self, files: int = CHECKPOINT_FILES):
        self._files: OrderedDict[Any, dict[int, int]] = OrderedDict()
        self._limit = files

    def nearest(self, key: Any, offset: int) -> tuple[int, int]:
        """The known checkpoint closest to `offset`, before or after it; the file's start when none is known."""
        known = self._files.get(key)
        if not known:
            return 0, 0
        self._files.move_to_end(key)
        closest = min([0, *known], key=lambda checkpoint: (abs(checkpoint - offset), checkpoint))
        return closest, known.get(closest, 0)

    def add(self, key: Any, offset: int, newlines: int) -> None:
        if key is None:
            return
        self._files.setdefault(key, {})[offset] = newlines
        self._files.move_to_end(key)
        while len(self._files) > self._limit:
            self._files.popitem(last=False)

    def newlines_before(self, key: Any, stream: BinaryIO, offset: int) -> int:
        """Newlines before `offset`, counted from the closest checkpoint forwards or backwards, keeping a
        checkpoint after each chunk counted."""
        known_offset, known_newlines = self.nearest(key, offset)
        low, high = sorted((known_offset, offset))
        running = count_newlines(stream, low, high)
        total = running[-1][1] if running else 0
        before_low = known_newlines if known_offset <= offset else known_newlines - total
        for chunk_end, newlines in running:
            self.add(key, chunk_end, before_low + newlines)
        return before_low + (total if known_offset <= offset else 0)


CHECKPOINTS = LineCheckpoints()


def file_key(path: str) -> Any:
    """What identifies a file's current content well enough to reuse its line counts: path, inode, size, times."""
    try:
        if not is_url(path):
            stat = os.stat(path)
            return (path, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        filesystem, inner = fsspec.core.url_to_fs(path)
        return (path, filesystem.ukey(inner))
    except Exception:  # noqa: BLE001 - without a key the counts are simply not reused
        return None


class LineRange(io.RawIOBase):
    """The bytes of the lines that start in [start, end) of a file, from the first line start at or after
    `start` through the newline that ends the line holding byte end-1.

    `first_line` is the number of newlines before the first owned byte, so line numbers stay those of the
    whole file. Reaching the end of the range records a checkpoint, so the next piece of the same file read
    by this process finds its line number without counting from the start of the file."""

    def __init__(self, path: str, start: int, end: int, checkpoints: LineCheckpoints = CHECKPOINTS):
        self._file = open_file(path)
        self._key = file_key(path)
        self._checkpoints = checkpoints
        self._end = end
        self._in_tail = False  # past `end`, reading to the newline that ends the last owned line
        self._newlines = 0
        self.first_line = 0
        try:
            self._position = self._first_line_start(start)
            self._finished = self._position >= end
            if not self._finished:
                self.first_line = checkpoints.newlines_before(self._key, self._file, self._position)
                self._file.seek(self._position)
                checkpoints.add(self._key, self._position, self.first_line)
        except BaseException:
            self._file.close()
            raise

    def _first_line_start(self, start: int) -> int:
        """The offset of the first line that starts at or after `start`."""
        if start == 0:
            return 0
        self._file.seek(start - 1)
        offset = start - 1
        while chunk := self._file.read(READ_CHUNK_BYTES):
            found = chunk.find(b"\n")
            if found >= 0:
                return offset + found + 1
            offset += len(chunk)
        return offset  # no newline after start: the rest of the file is the previous piece's last line

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._next_chunk(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def _next_chunk(self, size: int) -> bytes:
        if self._finished:
            return b""
        if not self._in_tail:
            chunk = self._file.read(min(size, self._end - self._position))
            self._position += len(chunk)
            if not chunk:
                return self._finish(b"")
            if self._position >= self._end:
                if chunk.endswith(b"\n"):
                    return self._finish(chunk)
                self._in_tail = True
            self._newlines += chunk.count(b"\n")
            return chunk
        chunk = self._file.read(size)
        found = chunk.find(b"\n")
        if found >= 0:
            return self._finish(chunk[: found + 1])
        self._position += len(chunk)
        return chunk if chunk else self._finish(b"")

    def _finish(self, chunk: bytes) -> bytes:
        self._finished = True
        self._position += len(chunk) if self._in_tail else 0
        self._newlines += chunk.count(b"\n")
        self._checkpoints.add(self._key, self._position, self.first_line + self._newlines)
        return chunk

    def close(self) -> None:
        self._file.close()
        super().close()


def open_line_range(path: str, piece: Piece) -> tuple[BinaryIO, int]:
    """A buffered stream of the lines a byte-range piece owns, and the number of lines before it in the file."""
    lines = LineRange(path, piece.start, piece.end)
    return io.BufferedReader(lines, READ_CHUNK_BYTES), lines.first_line
