"""File helpers every layer shares: write a file so no reader sees half of it, and expand globs in a fixed order.

Written once, so a temporary's name (which clean-up recognises), the clean-up after a failure and the order
of a glob's matches (which numbers the shards) are the same everywhere.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import fsspec

TEMP_MARK = ".tmp-"
TEMPORARY_NAME = re.compile(r"\..+" + re.escape(TEMP_MARK) + r"[0-9a-f]{32}")


def temporary_name(path: Path) -> Path:
    """The hidden name a writer uses until it commits; `Dataset.remove_temporaries` knows exactly this shape."""
    return path.with_name(f".{path.name}{TEMP_MARK}{uuid.uuid4().hex}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name to write `path` under, renamed into place when the block ends without error.

    On any error the temporary is removed; an OSError (a full disk) is raised again naming `path`,
    since the temporary's name would mean nothing to a user.
    """
    temporary = temporary_name(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: str) -> None:
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
