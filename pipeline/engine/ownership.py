"""Which directories Gristmill may write into: only those it made, so a user's files are never touched.

A directory is Gristmill's when it is absent, empty, or carries the owner marker `_gristmill.json`
(written when Gristmill first claims it). Datasets and run directories made before the marker
existed are recognised by their own files: a dataset by `_run.json` or `_manifest.json`, a run
directory by holding only Gristmill's run files and directories that are themselves Gristmill's.
Anything else is refused, naming the first unexpected entry, before any work starts.
"""

from __future__ import annotations

import json
from gristmill.pipeline.engine.dataset import DatasetError, write_json_atomic
from gristmill.pipeline.engine.files import Location, is_remote

OWNER_MARKER = "_gristmill.json"
RUN_FILES = frozenset({"_events.jsonl", "_summary.json"})
DATASET_MARKERS = ("_run.json", "_manifest.json")  # what datasets made before the owner marker carry


class OwnershipError(DatasetError):
    """An output directory holds files Gristmill did not create; the message names one."""


def _marked(path: Location) -> bool:
    marker = path / OWNER_MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text()).get("owner") == "gristmill"
        except (OSError, ValueError, AttributeError):
            return False
    return any((path / name).is_file() for name in DATASET_MARKERS)


def foreign_entry(path: Location) -> Location | None:
    """The first entry that makes `path` not Gristmill's to write into, or None when it is absent, empty or ours."""
    if not path.exists():
        return None
    if not path.is_dir():
        return path
    if _marked(path):
        return None
    entries = sorted(path.iterdir())
    has_owned_directory = False
    for entry in entries:
        if entry.name in RUN_FILES and entry.is_file():
            continue
        if entry.is_dir() and not entry.is_symlink() and foreign_entry(entry) is None:
            has_owned_directory = has_owned_directory or any(entry.iterdir())
            continue
        return entry
    if entries and not has_owned_directory:  # run files alone could be anyone's
        return entries[0]
    return None


def check_owned(path: Location, what: str = "--output") -> None:
    """Refuse, in one line, a directory that holds files Gristmill did not create."""
    entry = foreign_entry(path)
    if entry is None:
        return
    if entry == path:
        raise OwnershipError(f"{path}: {what} is a file, not a directory")
    raise OwnershipError(
        f"{path}: {what} holds {entry.name!r}, which Gristmill did not create; "
        "choose an empty or new directory (Gristmill writes only into directories it made)"
    )


def release_if_unused(path: Location) -> None:
    """Remove a directory `claim` made when nothing but its marker was written into it (a command that failed on
    its arguments), so a failed command leaves no trace."""
    if path.is_dir() and [entry.name for entry in path.iterdir()] == [OWNER_MARKER]:
        (path / OWNER_MARKER).unlink()
        if not is_remote(path):  # an object store's folder is only a prefix: it goes with its last object
            path.rmdir()


def claim(path: Location, what: str = "--output") -> None:
    """Check `path` is Gristmill's, create it if needed and mark it as Gristmill's."""
    check_owned(path, what)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / OWNER_MARKER).is_file():
        write_json_atomic(path / OWNER_MARKER, json.dumps({"owner": "gristmill"}))
