"""The ablation report: every section and figure is there, a variant's row shows its numbers, thin ablations render."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gristmill.pipeline.engine.report import check_html
from gristmill.pipeline.reports.ablation_report import (
    SECTIONS,
    AblationReportError,
    waterfall_steps,
    write_ablation_report,
)

TOKENS_PER_RUN = 20_000_000
SEEDS = [0, 1, 2]
HELDOUT_OFFSETS = {"slice": -0.05, "wiki": 0.02, "books": 0.03}  # each set's bpb beside the target (their mean)
# name, family, label, node, group, parameter, batching, documents, unique tokens, target bpb per seed (None: drawn)
VARIANTS = [
    ("raw", "raw", "raw", None, None, None, "dd", 60_000, 48_000_000, [1.2520, 1.2480, 1.2500]),
    ("step-url_filter", "cumulative", "after url_filter", "url_filter", None, None, "dd", 52_000, 42_000_000, 1.2310),
    ("step-quality", "cumulative", "after quality", "quality", None, None, "dd", 30_000, 25_000_000, 1.2020),
    ("step-near_dedup", "cumulative", "after near_dedup", "near_dedup", None, None, "dd", 24_000, 19_000_000,
     [1.1910, 1.1890, 1.1900]),
    ("without-url_filter", "leave_one_out", "without url_filter", "url_filter", None, None, "dd", 28_000,
     22_500_000, 1.1950),
    ("without-near_dedup", "leave_one_out", "without near_dedup", "near_dedup", None, None, "dd", 30_000,
     25_000_000, 1.2035),
    ("quality-top10", "threshold", "quality top 10%", "quality", "quality", 10.0, "dd", 6_000, 4_800_000, 1.2150),
    ("quality-top30", "threshold", "quality top 30%", "quality", "quality", 30.0, "dd", 18_000, 14_400_000, 1.1880),
    ("quality-top50", "threshold", "quality top 50%", "quality", "quality", 50.0, "dd", 30_000, 24_000_000, 1.1930),
    ("batching-dd", "batching", "batching dd", None, None, None, "dd", 24_000, 19_000_000, 1.1905),
    ("batching-concat", "batching", "batching concat", None, None, None, "concat", 24_000, 19_000_000, 1.1940),
    ("batching-best_fit", "batching", "batching best_fit", None, None, None, "best_fit", 24_000, 19_000_000, 1.1870),
]
FULL = "step-near_dedup"  # the last cumulative step is the whole recipe


def scores(per_seed: dict[str, float]) -> dict:
    values = np.array(list(per_seed.values()))
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "per_seed": per_seed}


def compare(this: dict, that: dict) -> dict:
    """Seed-paired difference of target bpb; the interval is the range of the paired differences."""
    differences = [this["target_bits_per_byte"]["per_seed"][seed] - that["target_bits_per_byte"]["per_seed"][seed]
                   for seed in this["target_bits_per_byte"]["per_seed"]]
    low, high = min(differences), max(differences)
    return {"against": that["name"], "delta": float(np.mean(differences)), "interval": [low, high],
            "separated": bool(high < 0 or low > 0), "token_share": this["unique_tokens"] / that["unique_tokens"]}


def make_variant(row: tuple, seeds: list[int], rng: np.random.Generator) -> dict:
    name, family, label, node, group, parameter, batching, documents, unique_tokens, target = row
    if not isinstance(target, list):
        noise = rng.normal(0, 0.0015, len(seeds))
        target = (target + noise - noise.mean()).tolist()  # the seeds' mean is the listed score
    per_seed = {str(seed): round(value, 6) for seed, value in zip(seeds, target)}
    positions = np.linspace(TOKENS_PER_RUN / 20, TOKENS_PER_RUN, 20).astype(int)
    final = float(np.mean(target)) * np.log(2) * 3.2  # loss in nats per token, roughly bpb × ln 2 × bytes/token
    return {
        "name": name, "family": family, "label": label, "node": node, "group": group, "parameter": parameter,
        "batching": batching, "documents": documents, "unique_tokens": unique_tokens,
        "heldout_excluded": documents // 200, "epochs": TOKENS_PER_RUN / unique_tokens,
        "tokens_trained": TOKENS_PER_RUN - (40_000 if batching == "best_fit" else 0),  # best_fit pads
        "bits_per_byte": {heldout: scores({seed: value + offset for seed, value in per_seed.items()})
                          for heldout, offset in HELDOUT_OFFSETS.items()},
        "target_bits_per_byte": scores(per_seed),
        "loss_curves": {str(seed): [[int(tokens), float(final + 8 * np.exp(-tokens / 2e6) + 0.01 * seed)]
                                    for tokens in positions] for seed in seeds},
        "comparisons": {"raw": None, "previous": None, "full": None},
    }


def synthetic_ablation() -> dict:
    """A made-up ablation (no training): raw, three cumulative steps, two left out, a threshold group of three and
    three batching strategies, over three seeds; the comparisons are computed from the per-seed scores."""
    rng = np.random.default_rng(3)
    variants = [make_variant(row, SEEDS, rng) for row in VARIANTS]
    by_name = {variant["name"]: variant for variant in variants}
    previous = by_name["raw"]
    for variant in variants[1:]:
        variant["comparisons"]["raw"] = compare(variant, by_name["raw"])
        if variant["family"] == "cumulative":
            variant["comparisons"]["previous"] = compare(variant, previous)
            previous = variant
        if variant["name"] != FULL:
            variant["comparisons"]["full"] = compare(variant, by_name[FULL])
    best, runner_up = by_name["quality-top30"], by_name["quality-top50"]
    margin = runner_up["target_bits_per_byte"]["mean"] - best["target_bits_per_byte"]["mean"]
    return {
        "format": "gristmill.ablation", "version": 1, "name": "web-recipe", "model": "gpt-20m",
        "tokens_per_run": TOKENS_PER_RUN, "steps": 610, "seeds": SEEDS, "heldout": list(HELDOUT_OFFSETS),
        "target": "mean", "heldout_slice": {"node": "read", "documents": 1_500, "fraction": 0.025},
        "variants": variants,
        "recommendations": [{"group": "quality", "column": "quality_score", "best": best["name"], "parameter": 30.0,
                             "runner_up": runner_up["name"], "margin": margin, "separated": True}],
        "findings": [
            "near_dedup removed 24% of tokens and changed held-out bpb by −0.0120 ± 0.0015 (separated over 3 seeds)",
            "url_filter removed 12% of tokens and changed held-out bpb by −0.0190 ± 0.0020 (separated over 3 seeds)",
        ],
        "seconds": {"recipe": 412.3, "variants": 95.0, "tokens": 60.2, "training": 1800.5, "total": 2368.0},
    }


def minimal_ablation() -> dict:
    """Only raw and the full recipe, one seed: no steps, thresholds or batching, nulls where the schema allows."""
    rng = np.random.default_rng(0)
    raw = make_variant(VARIANTS[0][:-1] + ([1.25],), [0], rng)
    full = make_variant(("full", "full", "full recipe", None, None, None, "dd", 24_000, 19_000_000, [1.19]), [0], rng)
    full["comparisons"]["raw"] = full["comparisons"]["previous"] = compare(full, raw)
    full["loss_curves"] = {}
    return {"format": "gristmill.ablation", "version": 1, "name": "tiny", "model": "gpt-tiny", "tokens_per_run": 1000,
            "steps": 4, "seeds": [0], "heldout": list(HELDOUT_OFFSETS), "target": "wiki", "heldout_slice": None,
            "variants": [raw, full], "recommendations": [], "findings": [], "seconds": {"total": 3.5}}


def markdown_row(markdown: str, label: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_has_every_section_figure_and_file(tmp_path):
    paths = write_ablation_report(synthetic_ablation(), tmp_path)
    assert all(path.is_file() for path in paths.values())
    checked = check_html(paths["html"])
    assert checked["headings"] == ["Ablation: web-recipe", *SECTIONS]
    # frontier, waterfall, the quality threshold group, loss curves
    assert len(checked["images"]) == 4
    assert len(list((tmp_path / "figures").glob("figure-*.png"))) == 4
    markdown = paths["markdown"].read_text()
    assert markdown.count("](figures/figure-") == 4
    assert json.loads(paths["json"].read_text())["ablation"]["name"] == "web-recipe"


def test_summary_shows_setup_and_findings(tmp_path):
    ablation = synthetic_ablation()
    markdown = write_ablation_report(ablation, tmp_path)["markdown"].read_text()
    assert markdown_row(markdown, "tokens per run") == ["tokens per run", "20,000,000"]
    assert markdown_row(markdown, "seeds") == ["seeds", "0, 1, 2"]
    assert markdown_row(markdown, "held-out slice") == ["held-out slice", "1,500 documents (2.5%) from read"]
    for finding in ablation["findings"]:
        assert f"\n{finding}\n" in markdown


def test_variant_row_shows_its_numbers(tmp_path):
    ablation = synthetic_ablation()
    markdown = write_ablation_report(ablation, tmp_path)["markdown"].read_text()
    header = markdown_row(markdown, "variant")
    assert header == ["variant", "documents", "unique tokens", "epochs", "target bpb (mean)", "slice bpb", "wiki bpb",
                      "books bpb", "Δ vs raw", "Δ vs previous step", "Δ vs full"]
    row = dict(zip(header, markdown_row(markdown, "after near_dedup")))
    assert row["documents"] == "24,000" and row["unique tokens"] == "19,000,000" and row["epochs"] == "1.05"
    assert row["target bpb (mean)"] == "1.1900 ± 0.0010"
    assert (row["slice bpb"], row["wiki bpb"], row["books bpb"]) == ("1.1400", "1.2100", "1.2200")
    assert row["Δ vs raw"] == "−0.0600 [−0.0610, −0.0590] ✓"
    previous = next(variant for variant in ablation["variants"] if variant["name"] == "step-near_dedup")
    expected = previous["comparisons"]["previous"]
    low, high = expected["interval"]
    assert row["Δ vs previous step"].startswith(
        f"{expected['delta']:+.4f} [{low:+.4f}, {high:+.4f}]".replace("-", "−"))
    assert row["Δ vs full"] == ""  # it is the full recipe
    raw = dict(zip(header, markdown_row(markdown, "raw")))
    assert raw["target bpb (mean)"] == "1.2500 ± 0.0020" and raw["Δ vs raw"] == ""


def test_thresholds_show_the_recommendation(tmp_path):
    markdown = write_ablation_report(synthetic_ablation(), tmp_path)["markdown"].read_text()
    assert "Recommended for quality: quality top 30% (quality_score 30); the runner-up, quality top 50%, scores " \
           "+0.0050 target bits per byte more, separated over 3 seeds." in markdown
    assert markdown_row(markdown, "30")[:2] == ["30", "quality top 30%"]
    assert [markdown_row(markdown, kind)[0] for kind in ("dd", "concat", "best_fit")] == ["dd", "concat", "best_fit"]
    assert markdown_row(markdown, "total") == ["total", "2,368.0", "100.0%"]


def test_minimal_ablation_renders(tmp_path):
    paths = write_ablation_report(minimal_ablation(), tmp_path)
    checked = check_html(paths["html"])
    assert checked["headings"] == ["Ablation: tiny", *SECTIONS]
    assert len(checked["images"]) == 2  # frontier and the raw run's loss curve
    markdown = paths["markdown"].read_text()
    assert "no cumulative steps" in markdown and "swept no thresholds" in markdown
    row = markdown_row(markdown, "full recipe")
    assert row[4] == "1.1900 ± 0.0000" and row[8] == "−0.0600 [−0.0600, −0.0600] ✓"


def test_waterfall_takes_the_full_recipe_after_the_steps():
    ablation = synthetic_ablation()
    assert [step["name"] for step in waterfall_steps(ablation)] == ["step-url_filter", "step-quality", FULL]
    # a recipe whose final node is no cumulative step gets a "full" variant, compared with the last step
    full = dict(ablation["variants"][3], name="full", family="full", label="full recipe")
    ablation["variants"].insert(4, full)
    assert [step["name"] for step in waterfall_steps(ablation)][-1] == "full"
    assert waterfall_steps(minimal_ablation()) == []


def test_nulls_and_missing_parts_do_not_crash(tmp_path):
    ablation = synthetic_ablation()
    for variant in ablation["variants"]:
        variant["comparisons"] = {"raw": None, "previous": None, "full": None}
        variant["loss_curves"] = {}
    ablation["variants"][2]["target_bits_per_byte"] = None
    ablation["recommendations"][0] |= {"runner_up": None, "margin": None}
    del ablation["seconds"], ablation["heldout_slice"]
    checked = check_html(write_ablation_report(ablation, tmp_path)["html"])
    assert checked["headings"] == ["Ablation: web-recipe", *SECTIONS]
    assert len(checked["images"]) == 3  # no loss curves; the waterfall draws the steps' means


def test_refuses_what_is_not_an_ablation(tmp_path):
    with pytest.raises(AblationReportError, match="format"):
        write_ablation_report({"format": "gristmill.sweep", "version": 1}, tmp_path)
