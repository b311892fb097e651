"""Mixtures: budgets, weights, repetition caps and selections compile into a deterministic, exact plan."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill.stages.tokens.decompose  # noqa: F401  (registers the stage)
from gristmill.pipeline.cli.tokens import mix
from gristmill.pipeline.tokens.export import export_buckets
from gristmill.pipeline.engine.dataset import REJECT_SCHEMA, Dataset, ParquetShardWriter, ShardRecord, write_json_atomic
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.tokens.indexed_dataset import IndexedDataset
from gristmill.pipeline.tokens.mixture import MixtureError, QualityLevels, compile_plan, load_mixture, sample_component
from gristmill.pipeline.engine.runner import run_graph
from gristmill.stages.tokens.tokenization import TOKENIZER_METADATA_KEY

TOKENIZED_SCHEMA = pa.schema(
    [("id", pa.string()), ("tokens", pa.list_(pa.uint32())), ("num_tokens", pa.int32()), ("source", pa.string()),
     ("quality", pa.float32())],
    metadata={TOKENIZER_METADATA_KEY: json.dumps({"path": "absent", "fingerprint": "xxh3_128:test", "vocab_size": 500,
                                                  "eos_token": "<|endoftext|>", "eos_id": 0}).encode()},
)


def write_tokenized(path: Path, rows: list[tuple[str, int, str, float | None]] | None = None) -> None:
    """Web pages of high quality (17 tokens: one D_4 piece each), of low quality (9: one D_3 piece), and wiki
    articles of 31 tokens (17 + 9 + 5: one piece in each of D_4, D_3 and D_2), as `tokenize` would leave them."""
    rows = rows or (
        [("web-high", 17, "web", 0.9)] * 10 + [("web-low", 9, "web", 0.2)] * 10 + [("wiki", 31, "wiki", None)] * 8
    )
    table = pa.table({
        "id": [f"{name}-{index}" for index, (name, *_) in enumerate(rows)],
        "tokens": [list(range(1 + index, 1 + index + length)) for index, (_, length, *_) in enumerate(rows)],
        "num_tokens": [length for _, length, *_ in rows],
        "source": [source for *_, source, _ in rows],
        "quality": [quality for *_, quality in rows],
    }, schema=TOKENIZED_SCHEMA)
    dataset = Dataset(path)
    dataset.prepare()
    writer = ParquetShardWriter(dataset.shard_path("part-00000"), TOKENIZED_SCHEMA)
    writer.write(table)
    size, checksum = writer.commit()
    ledger_bytes, ledger_checksum = ParquetShardWriter(dataset.reject_path("part-00000"), REJECT_SCHEMA).commit()
    record = ShardRecord(name="part-00000", source="generated", rows=len(rows), documents_out=len(rows), bytes=size,
                         checksum=checksum, rows_in=len(rows), ledger_bytes=ledger_bytes, ledger_checksum=ledger_checksum)
    write_json_atomic(dataset.record_path("part-00000"), record.model_dump_json(indent=2))
    dataset.finalize("generated", {}, "generated", [], [record], TOKENIZED_SCHEMA)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixture")
    write_tokenized(root / "tokens")
    (root / "g.yaml").write_text(
        "plugins: [gristmill.stages.tokens.decompose]\nstages:\n  pieces:\n    stage: decompose\n"
        f"    input: '{root / 'tokens'}'\n"
        "    params: {min_bucket: 2, max_bucket: 4, keep_columns: [source, quality]}\n"
    )
    run_graph(load_graph(root / "g.yaml", root / "run"), make_executor("inprocess"))
    export_buckets(root / "run" / "pieces", root / "export", seed=0)
    return root


MIXTURE = """\
seed: {seed}
data: export
total_tokens: 489
components:
  web_high: {{source: web, quality: {{column: quality, min: 0.5}}, tokens: {high}, max_epochs: 2}}
  web_low: {{source: web, quality: {{column: quality, max: 0.5}}, tokens: 45}}
  wiki_long: {{source: wiki, buckets: [4], weight: 1}}
  wiki_short: {{source: wiki, buckets: [2, 3], weight: 1, max_epochs: 1.5}}
"""


def write_mixture(root: Path, seed: int = 0, high: int = 300, name: str = "mix.yaml") -> Path:
    path = root / name
    path.write_text(MIXTURE.format(seed=seed, high=high))
    return path


def compiled(root: Path, **options):
    mixture, base = load_mixture(write_mixture(root, **options))
    return compile_plan(mixture, base)


def test_plan_meets_hand_checked_budgets_within_caps(exported: Path) -> None:
    header, plan = compiled(exported)
    components = {item["name"]: item for item in header["components"]}
    # web_high: 170 tokens available in 17-token sequences; 300 = one epoch (170) + 7 more (119) = 289.
    assert (components["web_high"]["tokens"], components["web_high"]["sequences"]) == (289, 17)
    assert components["web_high"]["available_tokens"] == 170
    assert (components["web_low"]["tokens"], components["web_low"]["sequences"]) == (45, 5)
    # Weights share 489 - 300 - 45 = 144 equally: 72 each; wiki_long has 17-token sequences: 4 of them.
    assert (components["wiki_long"]["budget"], components["wiki_long"]["tokens"]) == (72, 68)
    assert components["wiki_short"]["budget"] == 72 and 72 - 9 < components["wiki_short"]["tokens"] <= 72
    assert header["tokens"] == sum(item["tokens"] for item in components.values())
    assert header["sequences"] == len(plan)

    uses = Counter(map(tuple, plan[:, 1:].tolist()))
    tokens = Counter()
    for component, file, sequence in plan.tolist():
        tokens[component] += len(IndexedDataset(header["files"][file]["path"]).document(sequence))
    assert [tokens[item["index"]] for item in header["components"]] == [item["tokens"] for item in header["components"]]
    high_sequences = {key for key, row in zip(map(tuple, plan[:, 1:].tolist()), plan[:, 0]) if row == 0}
    assert max(uses[key] for key in high_sequences) == 2 and len(high_sequences) == 10


def test_every_planned_sequence_matches_its_components_selection(exported: Path) -> None:
    header, plan = compiled(exported)
    tables = [pq.read_table(f"{file['path']}.sequences.parquet").to_pylist() for file in header["files"]]
    expected = {
        "web_high": lambda row, bucket: row["source"] == "web" and row["quality"] >= 0.5,
        "web_low": lambda row, bucket: row["source"] == "web" and row["quality"] < 0.5,
        "wiki_long": lambda row, bucket: row["source"] == "wiki" and bucket == 4,
        "wiki_short": lambda row, bucket: row["source"] == "wiki" and bucket in (2, 3),
    }
    names = [item["name"] for item in header["components"]]
    for component, file, sequence in plan.tolist():
        assert expected[names[component]](tables[file][sequence], header["files"][file]["bucket"])


def test_plans_are_deterministic_by_seed(exported: Path) -> None:
    (header, first), (_, again), (reseeded_header, reseeded) = compiled(exported), compiled(exported), compiled(exported, seed=1)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, reseeded)
    # Whole sequences of one size make these totals independent of which sequences are drawn.
    totals = {item["name"]: item["tokens"] for item in header["components"] if item["name"] != "wiki_short"}
    assert totals == {item["name"]: item["tokens"] for item in reseeded_header["components"] if item["name"] != "wiki_short"}


def test_a_budget_beyond_the_cap_names_the_component_and_shortfall(exported: Path) -> None:
    with pytest.raises(MixtureError) as raised:
        compiled(exported, high=400)
    assert str(raised.value) == (
        "component 'web_high': budget 400 tokens exceeds 170 available × 2 epochs = 340 (short by 60)"
    )


def test_overlapping_components_and_bad_yaml_are_one_line_errors(exported: Path) -> None:
    (exported / "overlap.yaml").write_text(
        "data: export\ncomponents:\n  all: {tokens: 10}\n  web: {source: web, tokens: 10}\n")
    with pytest.raises(MixtureError, match="components 'all' and 'web' both select 20 sequences"):
        compile_plan(*load_mixture(exported / "overlap.yaml"))
    (exported / "typo.yaml").write_text("data: export\ncomponents:\n  web: {source: web, token: 10}\n")
    with pytest.raises(MixtureError, match=r"typo\.yaml: components\.web\.token: unknown field"):
        load_mixture(exported / "typo.yaml")
    (exported / "weights.yaml").write_text("data: export\ncomponents:\n  web: {source: web, weight: 1}\n")
    with pytest.raises(MixtureError, match="total_tokens is required"):
        compile_plan(*load_mixture(exported / "weights.yaml"))
    (exported / "nothing.yaml").write_text("data: missing\ncomponents:\n  web: {tokens: 1}\n")
    with pytest.raises(MixtureError, match="no exported buckets"):
        compile_plan(*load_mixture(exported / "nothing.yaml"))


@settings(max_examples=80, deadline=None)
@given(
    lengths=st.lists(st.sampled_from([5, 9, 17, 33]), min_size=1, max_size=40),
    epochs=st.floats(0.01, 4.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_sampling_stays_within_one_sequence_of_the_budget_and_under_the_cap(lengths, epochs, seed) -> None:
    tokens = np.array(lengths)
    budget = max(1, int(tokens.sum() * epochs))
    picked = sample_component(np.random.default_rng(seed), tokens, budget)
    planned = int(tokens[picked].sum())
    assert budget - tokens.max() < planned <= budget
    assert max(Counter(picked.tolist()).values(), default=0) <= int(np.ceil(budget / tokens.sum()))


def test_mix_command_writes_a_plan_the_trainer_can_memory_map(exported: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(mix, ["--input", str(write_mixture(exported)), "--output", str(tmp_path / "plan")])
    assert result.exit_code == 0, result.output
    header = json.loads((tmp_path / "plan" / "plan.json").read_text())
    plan = np.load(tmp_path / "plan" / header["array"], mmap_mode="r")
    assert plan.shape == (header["sequences"], 3) and header["columns"] == ["component", "file", "sequence"]
    assert all((tmp_path / "plan" / f"{file['path']}.bin").exists() for file in header["files"])
    assert "web_high" in result.output and f"{header['tokens']:,} tokens" in result.output
    refused = CliRunner().invoke(mix, ["--input", str(write_mixture(exported, high=400, name="big.yaml")), "--output",
                                       str(tmp_path / "refused")])
    assert refused.exit_code == 2 and "short by 60" in refused.output and not (tmp_path / "refused").exists()


def test_components_select_quality_levels_written_by_the_quality_bucket_stage(tmp_path: Path) -> None:
    """Scores → quality_bucket (4 global levels) → decompose keeps the level → export → a mixture takes levels."""
    rows = [(f"web{index}", 17, "web", index / 20) for index in range(20)] + [("wiki", 17, "wiki", None)] * 4
    write_tokenized(tmp_path / "tokens", rows)
    (tmp_path / "g.yaml").write_text(
        "stages:\n"
        f"  levels: {{stage: quality_bucket, input: '{tmp_path / 'tokens'}', params: {{column: quality, levels: 4}}}}\n"
        "  pieces:\n    stage: decompose\n    input: levels\n"
        "    params: {min_bucket: 2, max_bucket: 4, keep_columns: [source, quality_bucket]}\n"
    )
    run_graph(load_graph(tmp_path / "g.yaml", tmp_path / "run"), make_executor("inprocess"))
    export_buckets(tmp_path / "run" / "pieces", tmp_path / "export", seed=0)
    (tmp_path / "levels.yaml").write_text(
        "data: export\ncomponents:\n"
        "  top: {quality_bucket: '>= 3', tokens: 85}\n"
        "  middle: {quality_bucket: {column: quality_bucket, min: 1, max: 2}, tokens: 170}\n"
        "  wiki: {source: wiki, tokens: 68}\n"
    )
    header, plan = compile_plan(*load_mixture(tmp_path / "levels.yaml"))
    components = {item["name"]: item for item in header["components"]}
    # Level = floor(4 r / 20) for r lower scores: web15..19 are level 3, web5..14 levels 1 and 2, wiki unscored.
    assert [components[name]["available_tokens"] for name in ("top", "middle", "wiki")] == [85, 170, 68]
    assert components["top"]["selection"]["quality_bucket"] == {"column": "quality_bucket", "min": 3}
    tables = [pq.read_table(f"{file['path']}.sequences.parquet").to_pylist() for file in header["files"]]
    names = [item["name"] for item in header["components"]]
    taken = {name: set() for name in names}
    for component, file, sequence in plan.tolist():
        row = tables[file][sequence]
        taken[names[component]].add((row["document_id"], row["quality_bucket"]))
    assert {level for _, level in taken["top"]} == {3} and len(taken["top"]) == 5
    assert {level for _, level in taken["middle"]} == {1, 2} and len(taken["middle"]) == 10
    assert {level for _, level in taken["wiki"]} == {None}


@pytest.mark.parametrize("selection,message", [
    ("'>= fifteen'", "expected a comparison such as '>= 15'"),
    ("{min: 5, max: 2}", "min 5 is above max 2"),
    ("{column: quality_bucket}", "give min, max or both"),
])
def test_quality_level_selections_are_checked(tmp_path: Path, selection: str, message: str) -> None:
    (tmp_path / "m.yaml").write_text(f"data: x\ncomponents:\n  web: {{quality_bucket: {selection}, tokens: 1}}\n")
    with pytest.raises(MixtureError, match=message):
        load_mixture(tmp_path / "m.yaml")


def test_quality_level_comparisons_mean_inclusive_ranges() -> None:
    spelled = {text: QualityLevels.model_validate(text) for text in (">= 15", "> 14", "<= 4", "< 5", "== 7")}
    assert [(levels.min, levels.max) for levels in spelled.values()] == [(15, None), (15, None), (None, 4), (None, 4), (7, 7)]
