"""Gristmill writes only into directories it made, refuses bad inputs and configs in one line, and ends a
run on a full disk with the file and errno, leaving nothing half-written behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.ownership import OWNER_MARKER
from tests.conftest import REPO, gristmill_env, run_cli, write_corpus, write_graph


def one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("foreign", ["part-00000.parquet", "_events.jsonl", "_summary.json", "notes.txt"])
def test_output_holding_a_users_file_is_refused_before_any_work(tmp_path: Path, corpus: Path, foreign: str) -> None:
    output = tmp_path / "mine"
    output.mkdir()
    (output / foreign).write_bytes(b'{"not": "gristmill"}\n')
    before = snapshot(output)
    result = run_cli("read-text", "--input", f"{corpus}/*.jsonl", "--output", str(output), "--executor", "inprocess",
                     check=False)
    assert result.returncode == 2
    assert repr(foreign) in one_line_error(result)
    assert snapshot(output) == before  # nothing written, nothing appended, nothing replaced


def test_graph_refuses_a_node_directory_it_did_not_make(tmp_path: Path, corpus: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "long").mkdir(parents=True)
    (run_dir / "long" / "report.csv").write_text("a,b\n")
    result = run_cli("run", str(write_graph(tmp_path / "g.yaml", corpus)), "--output", str(run_dir),
                     "--executor", "inprocess", check=False)
    assert result.returncode == 2 and "'report.csv'" in one_line_error(result)
    assert not (run_dir / "read").exists()  # refused before the first node ran


def test_owned_and_empty_directories_are_accepted_and_marked(tmp_path: Path, corpus: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    run_cli("read-text", "--input", f"{corpus}/*.jsonl", "--output", str(empty), "--executor", "inprocess")
    assert json.loads((empty / OWNER_MARKER).read_text()) == {"owner": "gristmill"}
    again = run_cli("read-text", "--input", f"{corpus}/*.jsonl", "--output", str(empty), "--executor", "inprocess")
    assert "already complete" in again.stderr
    # A run directory holding Gristmill's own outputs (the demo's sample, a classifier) is Gristmill's too.
    run_dir = tmp_path / "run"
    run_cli("sample", "--output", str(run_dir / "sample"), "--pages", "40")
    run_cli("run", str(write_graph(tmp_path / "g.yaml", corpus)), "--output", str(run_dir), "--executor", "inprocess")
    assert Dataset(run_dir / "long").is_complete


def test_clean_up_removes_only_gristmills_temporaries(tmp_path: Path, corpus: Path) -> None:
    run_dir = tmp_path / "run"
    graph = write_graph(tmp_path / "g.yaml", corpus)
    run_cli("run", str(graph), "--output", str(run_dir), "--executor", "inprocess")
    ours = run_dir / "long" / f".part-00009.parquet.tmp-{'0' * 32}"  # what a killed writer leaves
    look_alikes = [
        run_dir / "long" / ".notes.tmp-mine",             # the shape is not a writer's
        run_dir / "long" / "_work" / "x" / ".a.tmp-keep",
        run_dir / "long" / "_failures" / f".b.tmp-{'1' * 32}",  # not a place writers use
    ]
    for path in [ours, *look_alikes]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    Dataset(run_dir / "long").remove_temporaries()
    assert not ours.exists()
    assert all(path.exists() for path in look_alikes)


def test_a_glob_that_matches_nothing_is_an_error(tmp_path: Path) -> None:
    result = run_cli("read-text", "--input", str(tmp_path / "nothing" / "*.jsonl"), "--output", str(tmp_path / "out"),
                     "--executor", "inprocess", check=False)
    assert result.returncode == 2 and "match no file" in one_line_error(result)
    assert not (tmp_path / "out" / "_manifest.json").exists()
    result = run_cli("read-text", "--input", str(tmp_path / "absent.jsonl"), "--output", str(tmp_path / "out"),
                     "--executor", "inprocess", check=False)
    assert result.returncode == 2 and "absent.jsonl: no such file" in one_line_error(result)


def test_an_empty_input_file_is_a_warning_in_the_summary(tmp_path: Path) -> None:
    write_corpus(tmp_path / "in", files=1, docs_per_file=20)
    (tmp_path / "in" / "zero.jsonl").write_text("")
    result = run_cli("read-text", "--input", f"{tmp_path / 'in'}/*.jsonl", "--output", str(tmp_path / "out"),
                     "--executor", "inprocess")
    assert "zero.jsonl holds no documents" in result.stderr
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert summary["stages"][0]["warnings"] == [f"read_text/part-00001: input {tmp_path / 'in' / 'zero.jsonl'} holds no documents"]


@pytest.mark.parametrize("yaml_text, expected", [
    ("name: t\nname: u\nstages: {a: {stage: read_text, params: {paths: [x]}}}\n", "line 2: not valid YAML (duplicate key 'name')"),
    ("stages:\n  a: {stage: read_text, params: {paths: [x], paths: [y]}}\n", "duplicate key 'paths'"),
    ("stages:\n  _summary.json: {stage: read_text, params: {paths: [x]}}\n", "stages._summary.json: node names start with"),
    ("plugins: [broken_plugin]\nstages: {a: {stage: read_text, params: {paths: [x]}}}\n", "broken_plugin.py:1: "),
    ("stages: !!python/object:os.system {a: 1}\n", "not valid YAML"),
])
def test_graph_errors_are_one_line(tmp_path: Path, yaml_text: str, expected: str) -> None:
    (tmp_path / "broken_plugin.py").write_text("def stage(:\n    pass\n")
    config = tmp_path / "g.yaml"
    config.write_text(yaml_text)
    result = subprocess.run([sys.executable, "-m", "pipeline", "plan", str(config), "--output", str(tmp_path / "run")],
                            capture_output=True, text=True, cwd=tmp_path,
                            env=gristmill_env() | {"PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"})
    assert result.returncode == 2
    assert expected in one_line_error(result)


def test_an_unreachable_scheduler_is_one_line(tmp_path: Path, corpus: Path) -> None:
    result = run_cli("read-text", "--input", f"{corpus}/*.jsonl", "--output", str(tmp_path / "out"),
                     "--scheduler", "tcp://127.0.0.1:9", check=False, timeout=120)
    assert result.returncode == 2
    assert "--scheduler tcp://127.0.0.1:9: cannot reach the Dask scheduler" in one_line_error(result)


def test_resume_under_another_library_version_is_refused(tmp_path: Path, corpus: Path) -> None:
    output = tmp_path / "out"
    run_cli("read-text", "--input", f"{corpus}/*.jsonl", "--output", str(output), "--executor", "inprocess")
    for name in ("_manifest.json", "_shards/part-00003.json"):  # as if killed before the last shard
        (output / name).unlink()
    marker = json.loads((output / "_run.json").read_text())
    marker["environment"]["pyarrow"] = "1.0.0"
    (output / "_run.json").write_text(json.dumps(marker))
    result = run_cli("read-text", "--input", f"{corpus}/*.jsonl", "--output", str(output), "--executor", "inprocess",
                     check=False)
    assert result.returncode == 2
    assert "partial dataset started under pyarrow 1.0.0" in one_line_error(result)


def test_disk_full_names_the_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    """A real full disk: a 1 MiB tmpfs in a private mount namespace, too small for the output."""
    if shutil.which("unshare") is None:
        pytest.fail("util-linux's unshare is needed to mount a small filesystem for this test")
    (tmp_path / "in").mkdir()
    for index in range(2):  # random text: about 2.5 MB that compresses no smaller than the disk
        lines = (json.dumps({"id": f"d{index}-{row}", "text": os.urandom(300).hex()}) for row in range(2000))
        (tmp_path / "in" / f"part{index}.jsonl").write_text("\n".join(lines) + "\n")
    full = tmp_path / "full"
    full.mkdir()
    as_root = [] if os.geteuid() == 0 else ["--map-root-user"]
    script = (f"mount -t tmpfs -o size=1m tmpfs {full} && {sys.executable} -m gristmill.pipeline read-text "
              f"--input '{tmp_path / 'in'}/*.jsonl' --output {full / 'out'} --executor inprocess --retries 0; "
              f"echo rc=$?; find {full} -name '.*.tmp-*' | sed 's/^/left: /'; "
              f"cat {full}/out/_failures/*.txt 2>/dev/null | tail -n 3 | sed 's/^/record: /'")
    result = subprocess.run(["unshare", "--mount", *as_root, "sh", "-c", script], capture_output=True, text=True,
                            env=gristmill_env(), cwd=REPO, timeout=300)
    assert "rc=1" in result.stdout, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all("Traceback" not in line for line in result.stderr.splitlines())
    assert str(full / "out") in errors[0] and "[Errno 28]" in errors[0] and "No space left on device" in errors[0]
    assert "left: " not in result.stdout  # no temporaries on the full disk
    # Either the failure record was kept, or the error says where it could not be written.
    assert "record: " in result.stdout or "failure record not written" in result.stderr


@pytest.mark.parametrize("command", [
    ["sample"], ["export"], ["mix"], ["tokenizer", "train"], ["tokenizer", "eval"], ["classifier", "train"],
    ["classifier", "eval"], ["classifier", "select-seeds"], ["report"], ["sweep"],
])
def test_every_command_that_writes_refuses_a_directory_it_did_not_make(tmp_path: Path, command: list[str]) -> None:
    output = tmp_path / "theirs"
    output.mkdir()
    (output / "notes.txt").write_text("mine\n")
    result = run_cli(*command, "--output", str(output), check=False)  # refused before any other option is read
    assert result.returncode == 2
    assert "'notes.txt', which Gristmill did not create" in one_line_error(result)
    assert snapshot(output) == {"notes.txt": b"mine\n"}
