"""Cluster-balanced mixture components (ClusterClip): flattened shares per cluster under a per-sequence repeat cap."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill.stages.tokens.decompose  # noqa: F401  (registers the stage)
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.reports.run_report import write_run_report
from gristmill.pipeline.tokens.export import export_buckets
from gristmill.pipeline.tokens.mixture import (
    ClusterBalance,
    MixtureError,
    compile_plan,
    load_mixture,
    sample_balanced,
    write_plan,
)
from gristmill.stages.tokens.tokenization import TOKENIZER_METADATA_KEY
from tests.test_quality_bucket import write_dataset

SEQUENCE = 17  # every document is 17 tokens: one D_4 piece, so a cluster's tokens are 17 × its documents
CLUSTER_DOCUMENTS = [140] + [2] * 24  # cluster 0 holds 70% of the 200 documents; 24 rare clusters
NULL_DOCUMENTS = 12
GROUPS = len(CLUSTER_DOCUMENTS) + 1


def tokenized_documents() -> pa.Table:
    """Documents as `tokenize` leaves them, with the int32 `semantic_cluster` of semantic dedup (null where unknown)."""
    clusters = [cluster for cluster, count in enumerate(CLUSTER_DOCUMENTS) for _ in range(count)] + [None] * NULL_DOCUMENTS
    metadata = {TOKENIZER_METADATA_KEY: json.dumps({"path": "absent", "fingerprint": "xxh3_128:test", "vocab_size": 500,
                                                    "eos_token": "<|endoftext|>", "eos_id": 0})}
    schema = pa.schema([("id", pa.string()), ("tokens", pa.list_(pa.uint32())), ("num_tokens", pa.int32()),
                        ("source", pa.string()), ("quality", pa.float32()), ("semantic_cluster", pa.int32())],
                       metadata=metadata)
    return pa.table({
        "id": [f"doc-{index:03d}" for index in range(len(clusters))],
        "tokens": [list(range(1 + index, 1 + index + SEQUENCE)) for index in range(len(clusters))],
        "num_tokens": [SEQUENCE] * len(clusters),
        "source": ["cc"] * len(clusters),
        "quality": [index / len(clusters) for index in range(len(clusters))],
        "semantic_cluster": clusters,
    }, schema=schema)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("balance")
    write_dataset(root / "tokens", tokenized_documents(), shards=2)
    (root / "g.yaml").write_text(
        f"stages:\n  pieces:\n    stage: decompose\n    input: '{root / 'tokens'}'\n"
        "    params: {min_bucket: 2, max_bucket: 4, keep_columns: [source, quality, semantic_cluster]}\n")
    run_graph(load_graph(root / "g.yaml", root / "run"), make_executor("inprocess"))
    export_buckets(root / "run" / "pieces", root / "export", seed=0)
    return root


def compiled(root: Path, balance: str, tokens: int = 1700, seed: int = 0, extra: str = ""):
    """Compile a one-component mixture; `extra` adds or overrides the component's fields (`, tokens: 7000`)."""
    path = root / "balanced.yaml"
    fields = f"source: cc, balance: {balance}" + (extra if "tokens:" in extra else f", tokens: {tokens}{extra}")
    path.write_text(f"seed: {seed}\ndata: export\ncomponents:\n  web: {{{fields}}}\n")
    return compile_plan(*load_mixture(path))


def planned_per_cluster(header: dict, plan: np.ndarray) -> Counter:
    """Tokens per cluster counted from the plan's rows and the exported sequence tables (not from the header)."""
    tables = [pq.read_table(f"{file['path']}.sequences.parquet").to_pylist() for file in header["files"]]
    tokens = Counter()
    for _, file, sequence in plan.tolist():
        row = tables[file][sequence]
        tokens[row["semantic_cluster"]] += row["num_tokens"]
    return tokens


def test_power_zero_gives_every_cluster_near_equal_tokens(exported: Path) -> None:
    header, plan = compiled(exported, "{power: 0, max_repeats: 2}")
    balance = header["components"][0]["balance"]
    table = balance["table"]
    assert balance["groups"] == GROUPS and table["group"] == [*range(len(CLUSTER_DOCUMENTS)), None]
    # 1700 / 26 = 65.4 tokens a cluster, under every cap (a rare cluster: 34 tokens × 2 repeats = 68).
    assert balance["clipped_groups"] == 0
    assert all(abs(planned - 1700 / GROUPS) < SEQUENCE + 1 for planned in table["planned_tokens"])
    assert 1700 - SEQUENCE < header["components"][0]["tokens"] <= 1700
    counted = planned_per_cluster(header, plan)
    assert [counted[group] for group in table["group"]] == table["planned_tokens"]


def test_clusters_held_at_the_cap_pass_their_share_to_the_others(exported: Path) -> None:
    header, plan = compiled(exported, "{power: 0, max_repeats: 1}")
    balance = header["components"][0]["balance"]
    planned = dict(zip(balance["table"]["group"], balance["table"]["planned_tokens"]))
    # The 24 rare clusters (34 tokens) are capped below their 65.4; of the 884 tokens left, half (442) would go to
    # the null group, capped at 204; cluster 0 takes the rest.
    assert balance["clipped_groups"] == 25
    assert [planned[cluster] for cluster in range(1, 25)] == [34] * 24 and planned[None] == 204
    assert planned[0] == 1700 - 24 * 34 - 204
    assert balance["clipped_tokens"] == round(24 * (1700 / GROUPS - 34))
    assert max(Counter(map(tuple, plan[:, 1:].tolist())).values()) == 1


def test_power_one_reproduces_the_natural_proportions(exported: Path) -> None:
    header, _ = compiled(exported, "{power: 1}")
    table = header["components"][0]["balance"]["table"]
    assert table["planned_tokens"] == [available // 2 for available in table["available_tokens"]]
    assert table["planned_tokens"][0] / sum(table["planned_tokens"]) == pytest.approx(0.7)


def test_balanced_plans_are_deterministic_by_seed(exported: Path) -> None:
    balance = "{power: 0.5, max_repeats: 3}"
    (_, first), (_, again), (_, reseeded) = (compiled(exported, balance), compiled(exported, balance),
                                             compiled(exported, balance, seed=7))
    assert np.array_equal(first, again) and not np.array_equal(first, reseeded)


def test_the_plan_tables_before_and_after_add_up(exported: Path, tmp_path: Path) -> None:
    header, plan = compiled(exported, "{power: 0.5, max_repeats: 3}", tokens=4000)
    component = header["components"][0]
    balance, table = component["balance"], component["balance"]["table"]
    assert sum(table["available_tokens"]) == component["available_tokens"] == 200 * SEQUENCE
    assert sum(table["planned_tokens"]) == component["tokens"] and 4000 - SEQUENCE < component["tokens"] <= 4000
    assert abs(sum(table["wanted_tokens"]) - 4000) <= GROUPS  # rounded shares
    assert all(planned <= 3 * available for planned, available in zip(table["planned_tokens"], table["available_tokens"]))
    assert "balance" not in component["selection"] and component["max_epochs"] == 3
    written = json.loads(write_plan(header, plan, tmp_path / "plan").read_text())
    assert written["components"][0]["balance"] == balance


def test_the_run_report_shows_tokens_per_cluster_before_and_after(exported: Path) -> None:
    header, plan = compiled(exported, "{power: 0, max_repeats: 2}")
    write_plan(header, plan, exported / "run" / "plan")
    write_run_report(exported / "run", exported / "report")
    markdown = (exported / "report" / "report.md").read_text()
    assert "Mixture plan: plan" in markdown and "balanced by semantic_cluster" in markdown
    assert "other (6)" in markdown  # 26 groups: the largest 20, then the rest in one row
    assert "Tokens per semantic_cluster of web, before and after" in markdown


@pytest.mark.parametrize("balance,extra,message", [
    ("{column: cluster_id}", "", r"no column cluster_id \(components\.web\.balance\.column\) to select by"),
    ("{power: 1.5}", "", r"balanced\.yaml: components\.web\.balance\.power: Input should be less than or equal to 1"),
    ("{power: -0.1}", "", r"components\.web\.balance\.power: Input should be greater than or equal to 0"),
    ("{max_repeats: 0}", "", r"components\.web\.balance\.max_repeats: Input should be greater than or equal to 1"),
    ("{power: 0}", ", max_epochs: 2", r"components\.web: .*max_epochs does not apply with balance"),
    ("{column: quality}", "", r"components\.web\.balance\.column: the column holds fractional values"),
    ("{column: source}", "", r"components\.web\.balance\.column: the column holds object values"),
    ("{max_repeats: 2}", ", tokens: 7000",
     r"budget 7,000 tokens exceeds 3,400 available × 2 repeats \(balance\.max_repeats\) = 6,800 \(short by 200\)"),
])
def test_balance_errors_are_one_line_naming_the_field(exported: Path, balance: str, extra: str, message: str) -> None:
    with pytest.raises(MixtureError, match=message) as raised:
        compiled(exported, balance, extra=extra)
    assert "\n" not in str(raised.value)


def test_balance_defaults_are_uniform_over_semantic_clusters_without_repeats() -> None:
    assert ClusterBalance() == ClusterBalance(column="semantic_cluster", power=0.0, max_repeats=1)


@settings(max_examples=120, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=12),
    nulls=st.integers(0, 5),
    power=st.floats(0.0, 1.0),
    max_repeats=st.integers(1, 5),
    fill=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_no_sequence_passes_the_cap_and_the_budget_is_met(sizes, nulls, power, max_repeats, fill, seed) -> None:
    rng = np.random.default_rng(seed)
    groups = np.concatenate([np.full(size, float(index)) for index, size in enumerate(sizes)] + [np.full(nulls, np.inf)])
    tokens = rng.choice([5, 9, 17, 33], size=len(groups))
    budget = int(tokens.sum() * max_repeats * fill)
    balance = ClusterBalance(power=power, max_repeats=max_repeats)
    picked, record = sample_balanced(np.random.default_rng(seed), tokens, groups, budget, balance)
    planned = int(tokens[picked].sum())
    assert budget - tokens.max() < planned <= budget or planned == budget == 0
    assert max(Counter(picked.tolist()).values(), default=0) <= max_repeats
    table = record["table"]
    assert sum(table["planned_tokens"]) == planned and sum(table["available_tokens"]) == int(tokens.sum())
    assert all(planned <= max_repeats * available
               for planned, available in zip(table["planned_tokens"], table["available_tokens"]))
    again, _ = sample_balanced(np.random.default_rng(seed), tokens, groups, budget, balance)
    assert np.array_equal(picked, again)
