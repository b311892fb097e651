"""File helpers every layer shares: where a path lives (disk or an fsspec URL), writing a file so no reader sees
half of it, and expanding globs in a fixed order.

Written once, so a temporary's name (which clean-up recognises), the clean-up after a failure and the order
of a glob's matches (which numbers the shards) are the same everywhere. On an object store (s3://, gs://,
abfs://, memory://) there is no rename: a file is written on local disk and uploaded under its final name in
one request, which the store makes visible whole or not at all.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import fsspec
from upath import UPath

# A dataset's location: a `Path` on local disk, a `UPath` (the same pathlib methods over fsspec) elsewhere.
Location = Path | UPath

TEMP_MARK = ".tmp-"
TEMPORARY_NAME = re.compile(r"\..+" + re.escape(TEMP_MARK) + r"[0-9a-f]{32}")


def as_location(path: str | os.PathLike) -> Location:
    """A local path (or file:// URL) as a plain `Path`, so local behaviour stays exactly as it was; any other
    URL as a `UPath` over its fsspec filesystem."""
    if isinstance(path, Path):
        return path
    if isinstance(path, UPath):
        return Path(path.path) if path.protocol in ("", "file", "local") else path
    text = os.fspath(path)
    if "://" not in text:
        return Path(text)
    location = UPath(text)
    if location.protocol in ("file", "local"):
        return Path(location.path)
    # Tasks on other processes and hosts write here: a cached listing would hide their files.
    return UPath(text, use_listings_cache=False) if location.protocol != "memory" else location


def is_remote(path: Location) -> bool:
    """True for a location on an object store or other fsspec filesystem, which has no atomic rename."""
    return not isinstance(path, Path)


def spool_path(path: Location) -> Path:
    """A private local file to write `path`'s content into before it is uploaded: unique per call, so tasks
    and hosts never share a temporary."""
    handle, name = tempfile.mkstemp(prefix="gristmill-", suffix="-" + path.name)
    os.close(handle)
    return Path(name)


def upload(local: Path, path: Location) -> None:
    """Put a finished local file under its final name on an object store: one request, whole or absent."""
    path.fs.put_file(str(local), path.path)


def upload_tree(local: Path, path: Location, last: str) -> None:
    """Put every file under `local` at the same place under `path`; the file named `last` goes last, so that its
    presence says the rest is there."""
    files = sorted((file for file in local.rglob("*") if file.is_file()), key=lambda file: (file.name == last, str(file)))
    for file in files:
        upload(file, path / file.relative_to(local).as_posix())


def remove_tree(path: Location) -> None:
    """Delete a folder of intermediate files and everything in it (on an object store: every key under it)."""
    if is_remote(path):
        path.fs.rm(path.path, recursive=True)
    else:
        shutil.rmtree(path)


def temporary_name(path: Path) -> Path:
    """The hidden name a writer uses until it commits; `Dataset.remove_temporaries` knows exactly this shape."""
    return path.with_name(f".{path.name}{TEMP_MARK}{uuid.uuid4().hex}")


@contextlib.contextmanager
def atomic_path(path: Location) -> Iterator[Path]:
    """A temporary name to write `path` under, renamed (or, on an object store, uploaded) into place when the
    block ends without error.

    On any error the temporary is removed; an OSError (a full disk) is raised again naming `path`,
    since the temporary's name would mean nothing to a user.
    """
    remote = is_remote(path)
    temporary = spool_path(path) if remote else temporary_name(path)
    try:
        yield temporary
        if remote:
            upload(temporary, path)
            temporary.unlink()
        else:
            os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Location, payload: str) -> None:
    """Write a JSON (or any text) payload so that `path` is either absent, the old file or the whole new one."""
    with atomic_path(path) as temporary:
        temporary.write_text(payload)


def expand_globs(patterns: Iterable[str]) -> list[str]:
    """Each pattern's matches, sorted, in the order of the patterns; a pattern without wildcards is kept as is.

    Sorted so that shard numbering is deterministic; a URL's glob (s3://, https://) is listed through fsspec.
    """
    files: list[str] = []
    for pattern in patterns:
        if not glob.has_magic(pattern):
            files.append(pattern)
        elif "://" in pattern:
            filesystem, _, matches = fsspec.get_fs_token_paths(pattern)
            files.extend(sorted(filesystem.unstrip_protocol(match) for match in matches))
        else:
            files.extend(sorted(glob.glob(pattern)))
    return files
