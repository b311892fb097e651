"""The quickstart as `make demo` runs it, on a smaller sample: every stage has work and the funnel adds up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gristmill.pipeline.engine.dataset import Dataset
from tests.conftest import REPO, run_cli


def test_quickstart_runs_from_warc_to_a_mixture_plan(tmp_path: Path) -> None:
    run, pages = tmp_path / "demo", 300  # enough tokens for the mixture's budgets and caps
    run_cli("sample", "--output", str(run / "sample"), "--pages", str(pages))
    labelled = str(run / "sample" / "pages.jsonl")
    run_cli("classifier", "train", "--positive", labelled, "--positive-where", 'kind == "prose"',
            "--negative", labelled, "--negative-where", 'kind in ["spam", "low_quality"]',
            "--output", str(run / "quality_model"))
    run_cli("run", str(REPO / "configs" / "quickstart.yaml"), "--output", str(run), "--workers", "2")
    run_cli("tokenizer", "train", "--input", str(run / "clean"), "--vocab-size", "1024", "--output", str(run / "tokenizer"))
    run_cli("run", str(REPO / "configs" / "quickstart-tokens.yaml"), "--output", str(run), "--executor", "inprocess")
    exported = run_cli("export", str(run / "buckets"), "--output", str(run / "shards")).stdout
    assert "bucket" in exported and "total" in exported
    mixed = run_cli("mix", "--input", str(REPO / "configs" / "quickstart-mixture.yaml"), "--data", str(run / "shards"),
                    "--output", str(run / "plan")).stdout
    assert "plan:" in mixed

    summary = json.loads((run / "_summary.json").read_text())["stages"]
    by_node = {stage["node"]: stage for stage in summary}
    assert set(by_node["ingest"]["rejected"]) == {"http_status", "not_html"}  # the sample's 404s, 301s and binaries
    assert by_node["exact_dedup"]["rejected"]["exact_duplicate"] > 0
    assert by_node["near_dedup"]["rejected"]["near_duplicate"] > 0
    assert any(reason.startswith("gopher_") for reason in by_node["gopher_quality"]["rejected"])
    previous_out = None
    for stage in ("ingest", "urls", "language", "exact_dedup", "near_dedup", "gopher_quality", "gopher_repetition",
                  "c4", "fineweb", "pii", "scored", "clean"):
        manifest = Dataset(run / stage).manifest()
        assert manifest.rows_in == manifest.rows + sum(manifest.rejected.values())
        if previous_out is not None:
            assert manifest.rows_in == previous_out
        previous_out = manifest.rows
    assert 0 < previous_out < pages

    # The mixture plan: the 3:1 budgets met from each component's own buckets, within its repetition cap.
    header = json.loads((run / "plan" / "plan.json").read_text())
    plan = np.load(run / "plan" / header["array"])
    components = header["components"]
    assert [(component["name"], component["budget"]) for component in components] == [("short", 9000), ("long", 3000)]
    assert len(plan) == header["sequences"] and header["tokens"] == sum(component["tokens"] for component in components)
    for index, component in enumerate(components):
        rows = plan[plan[:, 0] == index]
        assert len(rows) == component["sequences"] > 0
        buckets = {header["files"][file]["bucket"] for file in np.unique(rows[:, 1])}
        assert buckets <= set(component["selection"]["buckets"])
        longest = 2 ** max(component["selection"]["buckets"]) + 1
        assert 0 <= component["budget"] - component["tokens"] < longest
        assert component["epochs"] <= component["max_epochs"]
