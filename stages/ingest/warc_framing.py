"""Splits a WARC stream into records by Gristmill's own reading of each header block, before any parser sees them.

A wrong Content-Length makes a streaming parser merge the next record into this one, or land mid-payload;
here each record's declared end must meet the next `WARC/` header, or the record is set aside and reading
resumes at that header. The records found also give ingest a document count independent of the parser.
A piece of a large file starts at the first clean record start in its byte range and reads until the next one.
"""

from __future__ import annotations

import bisect
import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

# Records that can become documents; every other type describes a capture rather than being one.
DOCUMENT_TYPES = frozenset({"response", "conversion"})
# Writers in the wild end a block a few bytes away from its declared end (warcio's test files: a stray
# newline, a gzip trailer cut by two bytes). A record whose next header starts within this many bytes of
# where it should is read as declared; a larger gap means the declared length is wrong.
SLACK_BYTES = 16
SEPARATOR_BYTES = 4  # the CRLF CRLF that closes every record
MAX_HEADER_BYTES = 64 << 10
READ_BYTES = 1 << 20
RECORD_START = re.compile(rb"WARC/\d+\.\d+\r?\n")
HEADER_END = re.compile(rb"\r?\n\r?\n")
FIELD_SPELLINGS = ((b"content-length", b"\nContent-Length:"), (b"warc-type", b"\nWARC-Type:"),
                   (b"warc-record-id", b"\nWARC-Record-ID:"))
GZIP_MEMBER_START = b"\x1f\x8b\x08"  # magic and deflate method: every gzip member a WARC writer makes starts so
LINE_RECORD_START = b"\nWARC/"  # a record header at a line start of a plain WARC
MEMBER_PROBE_BYTES = 4 << 10  # compressed bytes decoded to rule out a false gzip header cheaply
# Member starts kept for locating records; older ones are dropped once the reader has passed them.
KEPT_MEMBER_STARTS = 1024
HEADER_FIELD = re.compile(rb"^(content-length|warc-type|warc-record-id)[ \t]*:[ \t]*(.*?)[ \t]*\r?$", re.I | re.M)


class DamagedGzip(OSError):
    """A gzip member is cut off or corrupt (not an EOFError, which warcio takes for a clean end of file)."""


class GzipMembers(io.RawIOBase):
    """Concatenated gzip members (one per record, or one for the whole file) as one decompressed stream.

    A cut-off or corrupt member raises only after every byte decoded before it was returned, so no
    record before the damage is lost (Python's gzip module drops its read-ahead buffer when it raises).
    `raw` is positioned at file offset `start` (a member start), and every compressed offset is the file's.
    """

    def __init__(self, raw: BinaryIO, start: int = 0):
        self.raw = raw
        self.decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.member_start = start  # compressed offset of the member being decoded
        self.fed = start  # file offset of the next compressed byte to give a decompressor
        self.produced = 0  # decompressed bytes so far
        # Where each member starts: in the decompressed stream, and in the file (recent members only).
        self.member_outputs: list[int] = [0]
        self.member_offsets: list[int] = [start]
        self.pending = memoryview(b"")
        self.error: Exception | None = None
        self.finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            if self.error is not None:
                raise self.error
            if self.finished:
                return 0
            self._decode_next_chunk()
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size

    def _decode_next_chunk(self) -> None:
        chunk = self.raw.read(1 << 16)
        if not chunk:
            if self.fed > self.member_start and not self.decompressor.eof:
                self.error = DamagedGzip(f"gzip member at byte {self.member_start} cut off")
            self.finished = True
            return
        decoded = []
        while chunk:
            try:
                decoded.append(self.decompressor.decompress(chunk))
            except zlib.error as error:
                self.error = DamagedGzip(f"gzip member at byte {self.member_start}: {error}")
                break
            self.produced += len(decoded[-1])
            if not self.decompressor.eof:
                self.fed += len(chunk)
                break
            rest = self.decompressor.unused_data
            self.fed += len(chunk) - len(rest)
            self.member_start = self.fed
            self.member_outputs.append(self.produced)
            self.member_offsets.append(self.fed)
            self.decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = rest
        self.pending = memoryview(b"".join(decoded))

    def locate(self, position: int) -> tuple[int, int]:
        """A decompressed offset as (file offset of the member holding it, bytes into that member's output)."""
        index = bisect.bisect_right(self.member_outputs, position) - 1
        return self.member_offsets[index], position - self.member_outputs[index]

    def forget_before(self, position: int) -> None:
        """Drop the starts of members wholly before `position`, which is never asked about again."""
        index = bisect.bisect_right(self.member_outputs, position) - 1
        if index > KEPT_MEMBER_STARTS:
            del self.member_outputs[:index], self.member_offsets[:index]


@dataclass(slots=True)
class ReadProblem:
    """A stretch of the file that is not a readable record; it becomes one ledger row."""

    reason: str
    location: str  # where in the file, as `WarcFrames.location` writes it
    detail: str
    record_id: str | None = None


@dataclass(slots=True)
class Frame:
    """One record as its header block declares it, and where it starts in the file (see `WarcFrames.location`)."""

    location: str
    record_type: str
    record_id: str | None
    declared_length: int
    data: bytes | None  # the whole record; None when it was skipped unread (declared length >= the limit)
    damage: str | None = None  # why the declared length is wrong (the record is then not read)


def is_gzip(stream: BinaryIO, start: int = 0) -> bool:
    """Whether the bytes at `start` begin a gzip member; the stream is left at `start`."""
    magic = stream.read(2)
    stream.seek(start)
    return magic == b"\x1f\x8b"


def open_warc(stream: BinaryIO, start: int = 0) -> tuple[BinaryIO, GzipMembers | None]:
    """The decompressed stream of a plain or gzip WARC read from file offset `start`, and its decompressor (None
    for a plain file)."""
    if not is_gzip(stream, start):
        return stream, None
    members = GzipMembers(stream, start)
    return members, members


class WarcFrames:
    """Iterates a WARC stream as Frames and ReadProblems, checking every declared length against the next header.

    `documents` counts what ingest must account for: each response or conversion record found, and each
    problem, so rows in = rows out + rejected can be checked against a count the parser had no part in.

    A piece of a file is read by `records_from` its first record, with `piece_end`: iteration stops before the
    first record at or after `piece_end` that `is_record_start` would accept there, which is where the next
    piece starts. Records before it are read whole, past `piece_end` if they run on.
    """

    def __init__(self, stream: BinaryIO, max_bytes: int, piece_end: int | None = None):
        self.stream = stream
        self.source: BinaryIO = stream
        self.gzip: GzipMembers | None = None
        self.max_bytes = max_bytes
        self.start = 0
        self.piece_end = piece_end
        self.buffer = bytearray()
        self.base = 0  # stream offset of buffer[0]: the file offset for a plain file, else the decompressed one
        self.at_eof = False
        self.damage: Exception | None = None  # why the stream ended early (a damaged gzip member)
        self.documents = 0

    def __iter__(self) -> Iterator[Frame | ReadProblem]:
        return self.records_from(0)

    def records_from(self, start: int) -> Iterator[Frame | ReadProblem]:
        """The records from file offset `start`, where the stream must be, with offsets and locations the file's."""
        self.start = start
        for item in self._frames():
            if isinstance(item, ReadProblem) or item.record_type in DOCUMENT_TYPES:
                self.documents += 1
            yield item

    def location(self, position: int) -> str:
        """Where a stream offset is in the file, the same whichever piece reads it: the file offset of a plain
        WARC; in a gzip WARC, the file offset of the member holding it (as Common Crawl's index gives a
        record's offset), with `+N` for N bytes into the member's decompressed output."""
        offset, within = self._file_position(position)
        return f"{offset}+{within}" if within else str(offset)

    def _file_position(self, position: int) -> tuple[int, int]:
        return (position, 0) if self.gzip is None else self.gzip.locate(position)

    def _starts_next_piece(self, position: int) -> bool:
        """Whether the clean record at `position` belongs to the next piece: it starts a member (or a line of a
        plain file) at or after `piece_end`, exactly where `is_record_start` would accept it."""
        if self.piece_end is None:
            return False
        offset, within = self._file_position(position)
        return within == 0 and offset >= self.piece_end

    def _frames(self) -> Iterator[Frame | ReadProblem]:
        self.source, self.gzip = open_warc(self.stream, self.start)
        if self.gzip is None:
            self.base = self.start
        self._fill(READ_BYTES)
        start = self.base + len(self.buffer) - len(self.buffer.lstrip(b"\r\n"))
        position = start if RECORD_START.match(self.buffer, start - self.base) else self._next_record(self.base)
        if position != start and self.buffer.strip():
            skipped = ("no WARC record found" if position is None
                       else f"{position - self.base} bytes before the first WARC record")
            where = self.location(self.base)
            yield ReadProblem("malformed_record", where, f"at byte {where}: {skipped}")
        while position is not None:
            self._discard_before(position)
            if self.gzip is not None:
                self.gzip.forget_before(position)
            header_end = self._header_end(position)
            if header_end is None:
                yield self._truncated(position, None, "record header cut off")
                return
            fields = self._header_fields(position, header_end)
            declared = _int_or_none(fields.get(b"content-length"))
            record_type = fields.get(b"warc-type", b"").decode("latin-1").strip().lower() or None
            record_id = fields.get(b"warc-record-id", b"").decode("latin-1") or None
            if declared is None or record_type is None:
                missing = "Content-Length" if declared is None else "WARC-Type"
                where = self.location(position)
                yield ReadProblem("malformed_record", where, f"at byte {where}: record without {missing}", record_id)
                position = self._next_record(header_end)
                continue
            if declared >= self.max_bytes:
                frame, following = self._skip_unread(position, header_end, declared, record_type, record_id)
                if frame.damage is None and self._starts_next_piece(position):
                    return
                yield frame
                position = following
                continue
            block_end = header_end + declared
            probe_end = block_end + SEPARATOR_BYTES + SLACK_BYTES + 16
            self._fill(probe_end - self.base)
            following = self._record_start_in(max(block_end - 1, header_end), probe_end)
            if following is not None and following - block_end <= SEPARATOR_BYTES + SLACK_BYTES:
                if self._starts_next_piece(position):
                    return
                yield self._frame(position, record_type, record_id, declared, block_end)
                position = following
                continue
            if following is None and self.at_eof and self._only_padding_after(block_end):
                if self._starts_next_piece(position):
                    return
                yield self._frame(position, record_type, record_id, declared, block_end)
                break
            # The declared end meets no header: the record really ends where the first header after its own starts.
            next_start = self._next_record(header_end)
            if next_start is None and block_end > self._available_end():
                yield self._truncated(position, record_id if record_type in DOCUMENT_TYPES else None,
                                      "file ends inside the record")
                return
            real_end = self._block_end(header_end, next_start if next_start is not None else self._available_end())
            where = ("then the end of the file" if next_start is None
                     else f"next record at byte {self.location(next_start)}")
            yield Frame(self.location(position), record_type, record_id, declared, None,
                        f"declared {declared} bytes, actual {real_end - header_end} ({where})")
            position = next_start
        if self.damage is not None:
            yield self._truncated(self._available_end(), None, "")

    def _frame(self, position: int, record_type: str, record_id: str | None, declared: int, block_end: int) -> Frame:
        data = bytes(self.buffer[position - self.base:block_end - self.base]) + b"\r\n\r\n"
        return Frame(self.location(position), record_type, record_id, declared, data)

    def _skip_unread(self, position: int, header_end: int, declared: int, record_type: str,
                     record_id: str | None) -> tuple[Frame, int | None]:
        """A record too large to hold is skipped; if no header meets its declared end, the records it covered are lost."""
        block_end = header_end + declared
        while self._available_end() < block_end + SEPARATOR_BYTES + SLACK_BYTES + 16 and not self.at_eof:
            self._discard_before(min(block_end, self._available_end()))
            self._fill(len(self.buffer) + READ_BYTES)
        following = self._next_record(min(block_end, self._available_end()) - 1)
        frame = Frame(self.location(position), record_type, record_id, declared, None)
        if following is not None and following - block_end > SEPARATOR_BYTES + SLACK_BYTES:
            frame.damage = (f"declared {declared} bytes, no record header at its end "
                            f"(next one at byte {self.location(following)})")
        return frame, following

    def _truncated(self, position: int, record_id: str | None, what: str) -> ReadProblem:
        if self.damage is not None:
            where = str(self.gzip.member_start) if self.gzip is not None else self.location(position)
            return ReadProblem("truncated", where, f"at byte {where}: {self.damage}"[:300], record_id)
        where = self.location(position)
        return ReadProblem("truncated", where, f"at byte {where}: {what}", record_id)

    def _header_end(self, position: int) -> int | None:
        """The stream offset just past the blank line that ends the header block at `position`."""
        searched = 0
        while True:
            start = max(position - self.base, searched - 3)
            end = self._blank_line_end(start)
            if end >= 0 and end - (position - self.base) <= MAX_HEADER_BYTES:
                return end + self.base
            if self.at_eof or len(self.buffer) - (position - self.base) > MAX_HEADER_BYTES:
                return None
            searched = len(self.buffer)
            self._fill(len(self.buffer) + READ_BYTES)

    def _blank_line_end(self, start: int) -> int:
        """Buffer index just past the first blank line from `start` (CRLF CRLF, or LF-only as some writers end it); -1 if none."""
        crlf = self.buffer.find(b"\r\n\r\n", start)
        limit = crlf if crlf >= 0 else len(self.buffer)
        if self.buffer.find(b"\n\n", start, limit) < 0 and self.buffer.find(b"\n\r\n", start, limit) < 0:
            return crlf + 4 if crlf >= 0 else -1
        match = HEADER_END.search(self.buffer, start)
        return match.end() if match is not None else -1

    def _header_fields(self, position: int, header_end: int) -> dict[bytes, bytes]:
        """Content-Length, WARC-Type and WARC-Record-ID: found by their usual spelling, else by a slower regex."""
        buffer, start, end = self.buffer, position - self.base, header_end - self.base
        fields: dict[bytes, bytes] = {}
        for name, spelled in FIELD_SPELLINGS:
            at = buffer.find(spelled, start, end)
            if at >= 0:
                value_start = at + len(spelled)
                fields[name] = bytes(buffer[value_start:buffer.find(b"\n", value_start, end)]).strip()
        if len(fields) < len(FIELD_SPELLINGS):
            for match in HEADER_FIELD.finditer(buffer, start, end):
                fields.setdefault(match.group(1).lower(), match.group(2))
        return fields

    def _next_record(self, start: int) -> int | None:
        """The stream offset of the first record header at a line start after `start`, reading on as needed."""
        while True:
            found = self._record_start_in(max(start, self.base + 1), self._available_end())
            if found is not None:
                return found
            if self.at_eof:
                return None
            start = max(start, self._available_end() - 16)
            self._discard_before(min(start, self._available_end()) - 1)
            self._fill(len(self.buffer) + READ_BYTES)

    def _record_start_in(self, start: int, end: int) -> int | None:
        """The stream offset of the first `WARC/x.y` line in [start, end) that starts a line, or None."""
        position = start - self.base - 1
        while True:
            position = self.buffer.find(b"\nWARC/", position + 1, end - self.base)
            if position < 0:
                return None
            if RECORD_START.match(self.buffer, position + 1):
                return position + 1 + self.base

    def _only_padding_after(self, block_end: int) -> bool:
        """At the end of the file: whether the record's block is all there, followed by little but newlines."""
        if block_end > self._available_end():
            return False
        return len(self.buffer[block_end - self.base:].strip(b"\r\n")) <= SLACK_BYTES

    def _block_end(self, header_end: int, following: int) -> int:
        """Where a block really ends: before the CRLF CRLF (or padding) that precedes the next record."""
        end = following
        while end > header_end and following - end < SEPARATOR_BYTES and self.buffer[end - 1 - self.base] in b"\r\n":
            end -= 1
        return end

    def _available_end(self) -> int:
        return self.base + len(self.buffer)

    def _discard_before(self, position: int) -> None:
        if position - self.base > READ_BYTES:
            del self.buffer[:position - self.base]
            self.base = position

    def _fill(self, size: int) -> None:
        """Read until the buffer holds `size` bytes or the stream ends (a damaged gzip member ends it too)."""
        while len(self.buffer) < size and not self.at_eof:
            try:
                chunk = self.source.read(max(READ_BYTES, size - len(self.buffer)))
            except DamagedGzip as error:
                self.damage, chunk = error, b""
            if not chunk:
                self.at_eof = True
            self.buffer += chunk


def may_start_member_record(head: bytes) -> bool:
    """False when the bytes at a gzip header candidate cannot begin a member that decompresses to a record
    header (a false header inside compressed data almost always fails within a few bytes); True otherwise."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        output = decompressor.decompress(head, 64)
    except zlib.error:
        return False
    if len(output) < 16 and not decompressor.eof:
        return True  # too little decoded to tell: the full check decides
    return RECORD_START.match(output) is not None


def read_at(stream: BinaryIO, offset: int, size: int = MEMBER_PROBE_BYTES) -> bytes:
    stream.seek(offset)
    return stream.read(size)


def is_record_start(stream: BinaryIO, offset: int, max_bytes: int) -> bool:
    """Whether a record starts cleanly at file offset `offset`: a record header (at the start of a gzip member,
    for a gzip WARC) whose declared length ends where the next record or the file does.

    This is the test by which a piece finds its first record and the piece before it stops, so neighbouring
    pieces agree on their boundary without coordination. It reads the record, and a little after it."""
    stream.seek(offset)
    if is_gzip(stream, offset) and not may_start_member_record(read_at(stream, offset)):
        return False
    stream.seek(offset)
    first = next(WarcFrames(stream, max_bytes).records_from(offset), None)
    return isinstance(first, Frame) and first.damage is None and first.location == str(offset)


def _int_or_none(value: bytes | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
