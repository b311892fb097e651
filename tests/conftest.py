"""Shared fixtures: small generated corpora and helpers to run the CLI as a user would."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORDS = ("the river mill grinds grain into flour while farmers bring wheat from distant fields "
         "and bakers wait for sacks before dawn because bread must be ready").split()


def write_corpus(directory: Path, files: int = 4, docs_per_file: int = 300, seed: int = 0) -> list[Path]:
    """JSONL files of documents with varied lengths, plus one malformed and one textless line each."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for file_index in range(files):
        path = directory / f"part{file_index}.jsonl"
        with open(path, "w") as handle:
            for doc_index in range(docs_per_file):
                length = rng.choice([3, 10, 40, 120, 400])
                text = " ".join(rng.choice(WORDS) for _ in range(length)) + "."
                handle.write(json.dumps({
                    "id": f"doc-{file_index}-{doc_index}",
                    "text": text,
                    "url": f"https://www.site{file_index}.example/{doc_index}",
                    "fetch_time": "2024-05-01T12:00:00Z",
                }) + "\n")
            handle.write("{not json\n")
            handle.write(json.dumps({"id": f"empty-{file_index}", "text": ""}) + "\n")
        paths.append(path)
    return paths


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    directory = tmp_path / "corpus"
    write_corpus(directory)
    return directory


def write_graph(path: Path, corpus: Path, extra_stages: str = "", plugins: bool = False) -> Path:
    text = (
        ("plugins: [tests.plugin_stages]\n" if plugins else "")
        + "name: t\nstages:\n"
        + f"  read:\n    stage: read_text\n    params: {{paths: ['{corpus}/*.jsonl']}}\n"
        + "  long:\n    stage: length_filter\n    input: read\n    params: {min_words: 20, max_chars: 2000}\n"
        + extra_stages
    )
    path.write_text(text)
    return path


def gristmill_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_cli(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=gristmill_env(),
        cwd=REPO, **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"gristmill {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def data_files(run_dir: Path) -> dict[str, bytes]:
    """Every data and ledger file under a run directory, by relative path."""
    return {
        str(path.relative_to(run_dir)): path.read_bytes()
        for path in sorted(run_dir.rglob("*.parquet"))
    }
