"""Verified reads and `gristmill verify`: damage anywhere in a finished dataset is found and named in one line, by
`verify`, by the next stage, by `inspect` and `report`, and never carried forward."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gristmill.pipeline.cli.main import cli
from gristmill.pipeline.engine.dataset import Dataset, DatasetError, Manifest, manifest_checksum, write_json_atomic
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import RunFailed, run_graph
from gristmill.pipeline.engine.verify import verify_dataset
from tests.conftest import write_corpus


def run_stages(directory: Path, stages: str, output: Path) -> None:
    graph = directory / f"{output.name}.yaml"
    graph.write_text("name: t\nstages:\n" + stages)
    run_graph(load_graph(graph, output), make_executor("inprocess"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished read_text dataset of three shards, with rejects in its ledger."""
    root = tmp_path_factory.mktemp("finished")
    write_corpus(root / "corpus", files=3, docs_per_file=80)
    run_stages(root, f"  read:\n    stage: read_text\n    params: {{paths: ['{root}/corpus/*.jsonl']}}\n", root / "run")
    return root / "run" / "read"


@pytest.fixture
def copy(finished: Path, tmp_path: Path) -> Path:
    target = tmp_path / "read"
    shutil.copytree(finished, target)
    return target


def dataset_files(dataset: Path) -> list[Path]:
    """Every file whose damage must be found: data shards, ledgers, shard records and the manifest."""
    return sorted([*dataset.glob("*.parquet"), *dataset.glob("_rejects/*.parquet"), *dataset.glob("_shards/*.json"),
                   dataset / "_manifest.json"])


def flip(path: Path, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[bit // 8 % len(data)] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def next_stage(dataset: Path, output: Path) -> str | None:
    """Run length_filter on `dataset`; the one-line error it fails with, or None when it completed."""
    try:
        run_stages(output.parent, f"  long:\n    stage: length_filter\n    input: '{dataset}'\n"
                                  "    params: {min_words: 20}\n", output)
    except DatasetError as error:
        return str(error)
    except RunFailed:
        failures = sorted((output / "long" / "_failures").glob("*.txt"))
        return failures[0].read_text().strip().splitlines()[-1]
    return None


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def said(result) -> list[str]:
    """What a command printed, less notes (a deprecated spelling's, say)."""
    return [line for line in result.output.splitlines() if not line.startswith("note:")]


def test_a_sound_dataset_verifies_with_exit_0_and_json(finished: Path) -> None:
    result = invoke("verify", "--input", str(finished))
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("ok (3 shard(s), 240 rows, 0 problem(s))")
    report = json.loads(invoke("verify", "--input", str(finished), "--json").stdout)
    assert report | {"path": None} == {"path": None, "kind": "dataset", "ok": True, "complete": True, "shards": 3,
                                       "rows": 240, "problems": [], "notes": []}


def silent_flip(path: Path) -> int:
    """A bit whose flip Parquet itself reads back as different text, without an error (as most flips in text are)."""
    original = pq.read_table(path)
    for bit in range(len(path.read_bytes()) * 8 // 2, len(path.read_bytes()) * 8, 37):
        flip(path, bit)
        try:
            changed = not pq.read_table(path).equals(original)
        except Exception:  # noqa: BLE001 - Parquet noticed this one; look for one it does not
            changed = False
        flip(path, bit)
        if changed:
            return bit
    raise AssertionError("no silently damaging flip found")


def test_a_flipped_bit_is_named_by_inspect_verify_and_the_next_stages_instead_of_carried_forward(copy: Path) -> None:
    shard = copy / "part-00000.parquet"  # the shard `inspect` samples; it stats the others, `verify` hashes them
    flip(shard, silent_flip(shard))
    message = f"{shard}: checksum differs from its shard record (damaged)"
    inspected = invoke("inspect", "--input", str(copy))
    assert inspected.exit_code != 0 and said(inspected) == [f"error: {message}"]
    verified = invoke("verify", "--input", str(copy))
    assert verified.exit_code == 1 and f"problem: {message}\n" in verified.output
    assert next_stage(copy, copy.parent / "filtered") == f"gristmill.pipeline.engine.dataset.DatasetError: {message}"
    assert not (copy.parent / "filtered" / "long" / "_manifest.json").exists()
    assert next_stage(copy, copy.parent / "filtered") == f"gristmill.pipeline.engine.dataset.DatasetError: {message}"  # not "complete"
    with pytest.raises(RunFailed):  # a stage with a global view: its summarize phase names the shard
        run_stages(copy.parent, f"  dedup:\n    stage: exact_dedup\n    input: '{copy}'\n", copy.parent / "dedup")
    failure = (copy.parent / "dedup" / "dedup" / "_failures" / "reduce.txt").read_text()
    assert failure.strip().splitlines()[-1] == f"gristmill.pipeline.engine.dataset.DatasetError: {message}"


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_truncated_or_deleted_first_shard_is_one_line_from_inspect_and_report(copy: Path, damage: str) -> None:
    shard = copy / "part-00000.parquet"
    size = shard.stat().st_size
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: size // 2])
        message = f"{shard}: {size // 2:,} bytes, its shard record says {size:,} (truncated or replaced)"
    else:
        shard.unlink()
        message = f"{shard}: missing (its shard record lists it)"
    for args in (["inspect", "--input", str(copy)], ["report", "--input", str(copy), "--output", str(copy.parent / "report")]):
        result = invoke(*args)
        assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
        assert said(result) == [f"error: {message}"]


def test_verify_gives_one_line_per_problem(copy: Path) -> None:
    flip(copy / "part-00000.parquet", 800)
    ledger = copy / "_rejects" / "part-00002.parquet"
    ledger.write_bytes(ledger.read_bytes()[:-1])
    record = copy / "_shards" / "part-00001.json"
    record.write_text(record.read_text().replace('"rows":', '"rows" :'))
    shutil.copy(copy / "part-00002.parquet", copy / "part-00009.parquet")
    result = invoke("verify", "--input", str(copy))
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if line.startswith("problem:")] == [
        f"problem: {copy}/part-00000.parquet: checksum differs from its shard record (damaged)",
        f"problem: {record}: not as Gristmill wrote it (damaged or edited)",
        f"problem: {ledger}: {ledger.stat().st_size:,} bytes, its shard record says {ledger.stat().st_size + 1:,} "
        "(truncated or replaced)",
        f"problem: {copy}/part-00009.parquet: not listed by the manifest",
    ]
    report = json.loads(invoke("verify", "--input", str(copy), "--json").stdout)
    assert report["ok"] is False and len(report["problems"]) == 4


def rewrite(dataset: Path, edit) -> None:
    """Change shard records and manifest consistently, checksums included, as a buggy writer would."""
    manifest = Dataset(dataset).manifest().model_copy(deep=True)
    edit(manifest)
    for record in manifest.shards:
        write_json_atomic(dataset / "_shards" / f"{record.name}.json", record.model_dump_json(indent=2))
    manifest.checksum = manifest_checksum(manifest)
    write_json_atomic(dataset / "_manifest.json", manifest.model_dump_json(indent=2))


def test_verify_checks_counts_against_the_files_they_count(copy: Path) -> None:
    def miscount(manifest: Manifest) -> None:
        first, second = manifest.shards[:2]
        first.rows, first.documents_out, first.rows_in = first.rows + 1, first.documents_out + 1, first.rows_in + 1
        second.rejected = {"malformed_json": 2}
        manifest.rows_in += 1

    rewrite(copy, miscount)
    problems = verify_dataset(copy).problems
    assert problems == [
        f"{copy}/_manifest.json: rows is 240, its shard records add up to 241",
        f"{copy}/_manifest.json: rejected is {{'malformed_json': 3, 'missing_text': 3}}, its shard records add up to "
        "{'malformed_json': 4, 'missing_text': 2}",
        f"{copy}/part-00000.parquet: 80 rows, its shard record says 81",
        f"{copy}/_rejects/part-00001.parquet: rejects {{'malformed_json': 1, 'missing_text': 1}}, its shard record says "
        "{'malformed_json': 2}",
    ]


def test_verify_still_knows_exports_and_refuses_neither_kind(tmp_path: Path) -> None:
    result = invoke("verify", "--input", str(tmp_path), "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["kind"] == "export"
    assert json.loads(result.stdout)["problems"] == [f"{tmp_path}: no gristmill.tokens sidecars found"]


# --- property: any single flipped bit or truncation, in any file, is found ------------------------------------------

damages = st.tuples(st.integers(min_value=0), st.booleans(), st.integers(min_value=0, max_value=1 << 40))


def apply_damage(dataset: Path, which: int, truncate: bool, where: int) -> bytes:
    """Damage one file in place; returns its original bytes for restoring."""
    files = dataset_files(dataset)
    path = files[which % len(files)]
    original = path.read_bytes()
    if truncate:
        path.write_bytes(original[: where % len(original)])
    else:
        flip(path, where % (len(original) * 8))
    return original


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=damages)
def test_verify_finds_every_flipped_bit_and_truncation(copy: Path, damage: tuple[int, bool, int]) -> None:
    which, truncate, where = damage
    path = dataset_files(copy)[which % len(dataset_files(copy))]
    original = apply_damage(copy, *damage)
    try:
        assert verify_dataset(copy).problems, f"{path}: damage at {where} not found"
    finally:
        path.write_bytes(original)
    assert verify_dataset(copy).problems == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=damages)
def test_the_next_stage_never_carries_damage_forward(copy: Path, damage: tuple[int, bool, int],
                                                    tmp_path_factory) -> None:
    which, truncate, where = damage
    path = dataset_files(copy)[which % len(dataset_files(copy))]
    original = apply_damage(copy, *damage)
    try:
        error = next_stage(copy, tmp_path_factory.mktemp("next"))
    finally:
        path.write_bytes(original)
    assert error is not None and str(copy) in error and "\n" not in error
