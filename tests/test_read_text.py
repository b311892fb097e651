"""read_text: every non-blank input line is either a document or a ledger row with a reason, whatever the line holds."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gristmill.pipeline.engine.dataset import Dataset, ShardRecord
from gristmill.pipeline.engine.stage import INPUT_DOCUMENTS_STAT
from gristmill.pipeline.engine.tasks import ShardTask, run_task
from gristmill.stages.ingest.read_text import ReadText

GOOD_TEXT = "the mill grinds grain into flour before dawn"


def good_line(index: int) -> bytes:
    return json.dumps({
        "id": f"good-{index}", "text": f"{GOOD_TEXT} {index}", "url": f"https://www.site.example/{index}",
        "fetch_time": "2024-05-01T12:00:00Z", "lang": "en", "lang_score": 0.9,
    }).encode() + b"\n"


# One line per kind of damage, with the reason it must be rejected under.
BAD_LINES: dict[str, bytes] = {
    "wrong_type": b'{"id": "bad-type", "text": "fine words", "domain": 123}\n',
    "lone_surrogate": b'{"id": "bad-escape", "text": "half a pair \\ud800 here"}\n',
    "surrogate_id": b'{"id": "\\udc00", "text": "fine words"}\n',
    "surrogate_id_no_text": b'{"id": "\\udc00", "text": 7}\n',
    "deep_nesting": b'{"id": "deep", "text": "fine words", "meta": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n",
    "invalid_utf8": b'{"id": "latin1", "text": "caf\xe9 cr\xe8me"}\n',
    "huge_integer": b'{"id": "huge", "text": "fine words", "n": ' + b"9" * 5_000 + b"}\n",
    "malformed": b'{"id": "cut", "text": "no closing\n',
    "not_object": b'["a", "list"]\n',
    "no_text": b'{"id": "empty", "text": ""}\n',
    "bad_time": b'{"id": "when", "text": "fine words", "fetch_time": "yesterday"}\n',
}
EXPECTED_REASON = {
    "wrong_type": "bad_field",
    "lone_surrogate": "bad_escape",
    "surrogate_id": "bad_escape",
    "surrogate_id_no_text": "missing_text",
    "deep_nesting": "too_deep",
    "invalid_utf8": "invalid_utf8",
    "huge_integer": "malformed_json",
    "malformed": "malformed_json",
    "not_object": "malformed_record",
    "no_text": "missing_text",
    "bad_time": "bad_field",
}


def ingest(path: Path, output: Path, **params) -> tuple[ShardRecord, pl.DataFrame, pl.DataFrame]:
    """Run read_text over one file as the runner does (ledger invariant checked); the record, documents and ledger."""
    dataset = Dataset(output)
    dataset.prepare()
    task = ShardTask(node="read", stage="read_text", config={"paths": [str(path)], **params},
                     source=str(path), output=str(output), name="part-00000")
    outcome = run_task(task)
    assert outcome.error is None, outcome.error
    return outcome.record, pl.read_parquet(dataset.shard_path(task.name)), pl.read_parquet(dataset.reject_path(task.name))


@pytest.mark.parametrize("damage", sorted(BAD_LINES))
def test_one_bad_line_is_rejected_with_its_reason_and_the_rest_of_the_file_is_kept(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"".join(good_line(i) for i in range(50)) + BAD_LINES[damage] + b"".join(good_line(i) for i in range(50, 100)))
    record, documents, ledger = ingest(path, tmp_path / "out")
    assert documents["id"].to_list() == [f"good-{i}" for i in range(100)]
    assert documents["domain"].unique().to_list() == ["site.example"]
    assert record.rejected == {EXPECTED_REASON[damage]: 1}
    assert record.rows_in == 101 == record.stats[INPUT_DOCUMENTS_STAT]
    assert ledger["reason"].to_list() == [EXPECTED_REASON[damage]]
    assert ledger["detail"][0]


def test_reject_details_name_the_field_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(good_line(0) + b"\n" + BAD_LINES["wrong_type"] + BAD_LINES["invalid_utf8"] + BAD_LINES["surrogate_id"])
    _, _, ledger = ingest(path, tmp_path / "out")
    details = dict(zip(ledger["reason"], ledger["detail"]))
    assert "domain" in details["bad_field"] and "int" in details["bad_field"]
    assert details["invalid_utf8"].startswith("line 4:")
    # A rejected line whose own id cannot be stored is named by file and line.
    assert dict(zip(ledger["reason"], ledger["id"]))["bad_escape"] == "docs/5"


def test_invalid_utf8_is_counted_and_rejected_by_default_or_kept_replaced_on_request(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(good_line(0) + BAD_LINES["invalid_utf8"] + BAD_LINES["invalid_utf8"].replace(b"latin1", b"again"))
    record, documents, _ = ingest(path, tmp_path / "reject")
    assert record.rejected == {"invalid_utf8": 2} and record.stats["invalid_utf8_lines"] == 2
    assert documents.height == 1
    record, documents, _ = ingest(path, tmp_path / "replace", on_invalid_utf8="replace")
    assert record.rejected == {} and record.stats["invalid_utf8_lines"] == 2
    assert documents.filter(pl.col("id") == "latin1")["text"].item() == "caf\ufffd cr\ufffdme"


def test_escaped_surrogate_pairs_are_text_and_a_lone_one_in_a_field_not_stored_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(
        json.dumps({"id": "emoji", "text": "wheat \U0001f33e and \\ud800 as plain characters"}).encode() + b"\n"
        + b'{"id": "meta", "text": "fine words", "meta": {"\\uDBFF": 1}}\n'
    )
    record, documents, _ = ingest(path, tmp_path / "out")
    assert record.rejected == {}
    assert documents["text"].to_list() == ["wheat \U0001f33e and \\ud800 as plain characters", "fine words"]


def test_lone_surrogates_in_several_batches_reject_only_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    lines = [good_line(i) for i in range(20_000)]
    for index in (5, 9_000, 19_999):
        lines[index] = BAD_LINES["lone_surrogate"].replace(b"bad-escape", f"bad-{index}".encode())
    path.write_bytes(b"".join(lines))
    record, documents, ledger = ingest(path, tmp_path / "out")
    assert record.rejected == {"bad_escape": 3} and documents.height == 19_997
    assert ledger["id"].to_list() == ["bad-5", "bad-9000", "bad-19999"]
    assert ledger["detail"][0] == "line 6: field 'text' holds a lone surrogate escape, which is not text"


def test_a_utf8_byte_order_mark_before_the_first_line_is_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good_line(0) + good_line(1))
    record, documents, _ = ingest(path, tmp_path / "out")
    assert documents.height == 2 and record.rejected == {}


def test_crlf_lines_blank_lines_and_a_missing_final_newline_are_read(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(good_line(0).replace(b"\n", b"\r\n") + b"\r\n  \n" + good_line(1).rstrip(b"\n"))
    record, documents, _ = ingest(path, tmp_path / "out")
    assert documents["id"].to_list() == ["good-0", "good-1"] and record.rows_in == 2


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gz": gzip.compress,
    "zst": zstandard.ZstdCompressor().compress,
    "bz2": lambda data: bz2.compress(data, 1),  # 100 kB blocks, so a cut leaves whole blocks before it
    "xz": lzma.compress,
}


def varied_lines(count: int) -> bytes:
    """Lines that compress poorly enough that a cut lands mid-file, not in a trailer."""
    return b"".join(
        json.dumps({"id": f"good-{i}", "text": f"{GOOD_TEXT} {i} {i * 2_654_435_761 % 2**40:x}" * 3}).encode() + b"\n"
        for i in range(count)
    )


@pytest.mark.parametrize("extension", sorted(COMPRESSORS))
def test_a_truncated_compressed_file_keeps_every_line_before_the_damage(tmp_path: Path, extension: str) -> None:
    data = varied_lines(2_000)
    compressed = COMPRESSORS[extension](data)
    path = tmp_path / f"docs.jsonl.{extension}"
    path.write_bytes(compressed[: len(compressed) * 2 // 3])
    # What the decompressor can still give back is the most a reader can keep.
    readable = decompressible_prefix(extension, compressed[: len(compressed) * 2 // 3])
    complete_lines = readable.count(b"\n")
    assert 0 < complete_lines < 2_000
    record, documents, ledger = ingest(path, tmp_path / "out")
    assert documents["id"].to_list() == [f"good-{i}" for i in range(complete_lines)]
    assert record.rejected == {"truncated_input": 1}
    assert record.rows_in == complete_lines + 1
    assert ledger["detail"][0].startswith(f"line {complete_lines + 1}: the rest of the file is unreadable")


def decompressible_prefix(extension: str, cut: bytes) -> bytes:
    if extension == "zst":
        return zstandard.ZstdDecompressor().decompressobj().decompress(cut)
    if extension == "gz":
        import zlib

        return zlib.decompressobj(wbits=31).decompress(cut)
    decompressor = bz2.BZ2Decompressor() if extension == "bz2" else lzma.LZMADecompressor()
    return decompressor.decompress(cut)


@pytest.mark.parametrize("extension", sorted(COMPRESSORS))
def test_complete_compressed_files_of_several_members_or_frames_are_read_whole(tmp_path: Path, extension: str) -> None:
    path = tmp_path / f"docs.jsonl.{extension}"
    path.write_bytes(COMPRESSORS[extension](varied_lines(300)) + COMPRESSORS[extension](b"\n" + varied_lines(5)))
    record, documents, _ = ingest(path, tmp_path / "out")
    assert documents.height == 305 and record.rejected == {} and record.rows_in == 305


def test_a_file_that_is_not_what_its_name_says_is_one_reject(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(varied_lines(10))
    record, documents, ledger = ingest(path, tmp_path / "out")
    assert documents.height == 0 and record.rejected == {"truncated_input": 1}
    assert "gzip" in ledger["detail"][0].lower()


def test_a_reader_that_silently_drops_a_line_breaks_the_ledger_invariant(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"".join(good_line(i) for i in range(100)))
    parse_records = ReadText._jsonl_records

    def dropping_records(self, *args):
        for position, record in parse_records(self, *args):
            if position != 42:
                yield position, record

    monkeypatch.setattr(ReadText, "_jsonl_records", dropping_records)
    Dataset(tmp_path / "out").prepare()
    outcome = run_task(ShardTask(node="read", stage="read_text", config={"paths": [str(path)]},
                                 source=str(path), output=str(tmp_path / "out"), name="part-00000"))
    assert outcome.record is None
    assert "broke the ledger invariant" in outcome.error and "100 in != 99 out + 0 rejected" in outcome.error


def test_parquet_rows_of_the_wrong_type_are_rejected_and_the_rest_kept(tmp_path: Path) -> None:
    table = pa.table({
        "id": [f"row-{i}" for i in range(6)],
        "text": ["words"] * 5 + [None],
        "url": ["https://a.example/1"] * 6,
        # Scores written as strings by a loosely typed exporter: numbers are read, anything else is a bad field.
        "lang_score": pa.array(["0.5", "high", "0.7", None, "0.1", "0.2"]),
    })
    path = tmp_path / "docs.parquet"
    pq.write_table(table, path)
    record, documents, _ = ingest(path, tmp_path / "out")
    assert documents["id"].to_list() == ["row-0", "row-2", "row-3", "row-4"]
    assert record.rejected == {"bad_field": 1, "missing_text": 1}
    assert record.stats[INPUT_DOCUMENTS_STAT] == 6 == record.rows_in


def test_a_parquet_column_of_the_wrong_type_rejects_its_rows_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["one", "two"], "domain": [123, 456]}), path)
    record, documents, ledger = ingest(path, tmp_path / "out")
    assert documents.height == 0 and record.rejected == {"bad_field": 2}
    assert "domain" in ledger["detail"][0]


line_kinds = st.lists(st.one_of(st.sampled_from(sorted(BAD_LINES)), st.just("good"), st.just("blank")), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=line_kinds, compress=st.booleans())
def test_any_mix_of_lines_is_fully_accounted_for_and_every_good_line_kept(tmp_path_factory, kinds, compress) -> None:
    directory = tmp_path_factory.mktemp("mix")
    lines = []
    for index, kind in enumerate(kinds):
        if kind == "good":
            lines.append(good_line(index))
        elif kind == "blank":
            lines.append(b"  \n")
        else:
            lines.append(BAD_LINES[kind])
    data = b"".join(lines)
    path = directory / ("docs.jsonl.gz" if compress else "docs.jsonl")
    path.write_bytes(gzip.compress(data) if compress else data)
    non_blank = sum(1 for kind in kinds if kind != "blank")
    record, documents, ledger = ingest(path, directory / "out")
    assert record.rows_in == non_blank == documents.height + ledger.height
    assert documents["id"].to_list() == [f"good-{i}" for i, kind in enumerate(kinds) if kind == "good"]
    assert sorted(ledger["reason"]) == sorted(EXPECTED_REASON[kind] for kind in kinds if kind in BAD_LINES)


def test_a_parquet_row_group_that_cannot_be_decoded_rejects_its_rows_and_the_next_group_is_read(tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    table = pa.table({"id": [f"row-{i}" for i in range(2_000)], "text": [f"words {i} " * 20 for i in range(2_000)]})
    pq.write_table(table, path, row_group_size=1_000, compression="zstd")
    text_chunk = pq.ParquetFile(path).metadata.row_group(0).column(1)
    start = text_chunk.dictionary_page_offset or text_chunk.data_page_offset
    damaged = bytearray(path.read_bytes())
    middle = start + text_chunk.total_compressed_size // 2
    damaged[middle:middle + 64] = b"\xff" * 64
    path.write_bytes(damaged)
    record, documents, ledger = ingest(path, tmp_path / "out")
    assert documents["id"].to_list() == [f"row-{i}" for i in range(1_000, 2_000)]
    assert record.rejected == {"unreadable_row_group": 1_000} and record.rows_in == 2_000
    assert ledger["detail"][0].startswith("row 1: row group 0:")


def test_a_parquet_file_cut_before_its_footer_is_one_reject(tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["one", "two"]}), path)
    path.write_bytes(path.read_bytes()[:-20])
    record, documents, ledger = ingest(path, tmp_path / "out")
    assert documents.height == 0 and record.rejected == {"truncated_input": 1}
    assert "Parquet" in ledger["detail"][0]
