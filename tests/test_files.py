"""The shared file helpers: an atomic write leaves the old file or the whole new one, and globs expand in a fixed order."""

from __future__ import annotations

import errno
from pathlib import Path

import fsspec
import pytest

from gristmill.pipeline.engine.files import TEMPORARY_NAME, atomic_path, expand_globs, write_json_atomic


def test_an_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text('{"old": true}')
    write_json_atomic(path, '{"new": true}')
    assert path.read_text() == '{"new": true}' and [entry.name for entry in tmp_path.iterdir()] == ["summary.json"]


def test_a_failed_write_keeps_the_old_file_removes_the_temporary_and_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"complete")
    with pytest.raises(OSError) as raised, atomic_path(path) as temporary:
        assert TEMPORARY_NAME.fullmatch(temporary.name) and temporary.parent == tmp_path
        temporary.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(temporary))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    with pytest.raises(ValueError), atomic_path(path) as temporary:
        temporary.write_bytes(b"half")
        raise ValueError("the writer itself failed")
    assert path.read_bytes() == b"complete" and [entry.name for entry in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_globs_expand_sorted_per_pattern_in_pattern_order_and_plain_paths_stay(tmp_path: Path) -> None:
    for name in ("b-2.warc.gz", "b-10.warc.gz", "a-1.warc.gz", "notes.txt"):
        (tmp_path / name).write_text("")
    patterns = [str(tmp_path / "b-*.warc.gz"), str(tmp_path / "missing.jsonl"), str(tmp_path / "a-?.warc.gz")]
    assert expand_globs(patterns) == [str(tmp_path / name) for name in
                                      ("b-10.warc.gz", "b-2.warc.gz", "missing.jsonl", "a-1.warc.gz")]
    assert expand_globs([str(tmp_path / "*.parquet")]) == []


def test_a_url_glob_is_listed_through_fsspec() -> None:
    memory = fsspec.filesystem("memory")
    for name in ("crawl-b.warc.gz", "crawl-a.warc.gz", "other.txt"):
        memory.pipe(f"/globbed/{name}", b"")
    try:
        assert expand_globs(["memory:///globbed/crawl-*.warc.gz"]) == [
            "memory:///globbed/crawl-a.warc.gz", "memory:///globbed/crawl-b.warc.gz"]
    finally:
        memory.rm("/globbed", recursive=True)
