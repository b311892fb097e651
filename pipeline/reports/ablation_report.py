"""The ablation report (`gristmill ablate`): what each recipe step, left-out step, threshold and batching choice did
to held-out bits per byte. It renders `ablation.json` as the analysis wrote it; null or absent parts are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gristmill.pipeline.engine.report import Report, plt

FORMAT = "gristmill.ablation"
VERSIONS = (1,)
SECTIONS = ("Summary", "Variants", "Frontier", "Per-stage waterfall", "Thresholds", "Batching", "Loss curves",
            "Timing")
FAMILY_COLOURS = {"raw": "tab:grey", "cumulative": "tab:blue", "leave_one_out": "tab:orange",
                  "threshold": "tab:green", "batching": "tab:purple", "full": "tab:red"}
FAMILY_NAMES = {"raw": "raw", "cumulative": "cumulative step", "leave_one_out": "leave one out",
                "threshold": "threshold", "batching": "batching", "full": "full recipe"}
OTHER_COLOUR = "tab:brown"
LINE_STYLES = ("-", "--", ":", "-.")
TIMING_ORDER = ("recipe", "variants", "tokens", "training", "total")
MINUS = "\N{MINUS SIGN}"
SEPARATED_MARK = "\N{CHECK MARK}"


class AblationReportError(ValueError):
    """The dict is not an ablation this report can render; the message says why."""


# ---------------------------------------------------------------------------------------------------------------------
# Numbers as the reader sees them


def signed(value: float) -> str:
    """A delta with its sign and four decimals, a true minus sign for negatives: −0.0312, +0.0040."""
    return f"{value:+.4f}".replace("-", MINUS)


def bits(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def mean_and_spread(score: dict | None) -> str:
    """`1.2345 ± 0.0012`: a score's mean over seeds and their standard deviation."""
    if not score or score.get("mean") is None:
        return ""
    return f"{score['mean']:.4f} ± {score.get('std') or 0.0:.4f}"


def comparison_text(comparison: dict | None) -> str:
    """`−0.0312 [−0.0350, −0.0280] ✓`: delta, interval over seeds, and the mark when the analysis says separated."""
    if not comparison or comparison.get("delta") is None:
        return ""
    delta = comparison["delta"]
    low, high = comparison.get("interval") or (delta, delta)
    mark = f" {SEPARATED_MARK}" if comparison.get("separated") else ""
    return f"{signed(delta)} [{signed(low)}, {signed(high)}]{mark}"


def share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def parameter_text(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# ---------------------------------------------------------------------------------------------------------------------
# Reading the dict


def check_ablation(ablation: dict) -> None:
    if ablation.get("format") != FORMAT:
        raise AblationReportError(f"not an ablation: format is {ablation.get('format')!r}, expected {FORMAT!r}")
    if ablation.get("version") not in VERSIONS:
        raise AblationReportError(f"ablation version {ablation.get('version')!r} is not one of {VERSIONS}")


def variants_of(ablation: dict, family: str | None = None) -> list[dict]:
    variants = ablation.get("variants") or []
    return [variant for variant in variants if family is None or variant.get("family") == family]


def target_mean(variant: dict | None) -> float | None:
    score = (variant or {}).get("target_bits_per_byte") or {}
    return score.get("mean")


def comparison(variant: dict, against: str) -> dict | None:
    return (variant.get("comparisons") or {}).get(against)


def label_of(variant: dict) -> str:
    return variant.get("label") or variant.get("name") or "?"


def seed_count(ablation: dict) -> int:
    return len(ablation.get("seeds") or [])


def separated_words(separated: bool | None, seeds: int) -> str:
    return f"{'separated' if separated else 'not separated'} over {plural(seeds, 'seed')}"


# ---------------------------------------------------------------------------------------------------------------------
# Tables


def setup_rows(ablation: dict) -> list[dict[str, Any]]:
    heldout_slice = ablation.get("heldout_slice") or {}
    slice_text = ""
    if heldout_slice:
        documents = heldout_slice.get("documents")
        slice_text = (f"{documents:,} documents" if documents is not None else "documents") + \
            (f" ({share(heldout_slice['fraction'])})" if heldout_slice.get("fraction") is not None else "") + \
            (f" from {heldout_slice['node']}" if heldout_slice.get("node") else "")
    rows = [("model", ablation.get("model")), ("tokens per run", ablation.get("tokens_per_run")),
            ("steps", ablation.get("steps")), ("seeds", ", ".join(map(str, ablation.get("seeds") or []))),
            ("held-out sets", ", ".join(ablation.get("heldout") or [])), ("held-out slice", slice_text),
            ("target (ranks the variants)", ablation.get("target")), ("variants", len(variants_of(ablation)))]
    return [{"setting": setting, "value": value} for setting, value in rows]


def variant_row(ablation: dict, variant: dict) -> dict[str, Any]:
    target = ablation.get("target") or "target"
    row = {"variant": label_of(variant), "documents": variant.get("documents"),
           "unique tokens": variant.get("unique_tokens"),
           "epochs": None if variant.get("epochs") is None else f"{variant['epochs']:.2f}",
           f"target bpb ({target})": mean_and_spread(variant.get("target_bits_per_byte"))}
    scores = variant.get("bits_per_byte") or {}
    for name in ablation.get("heldout") or []:
        row[f"{name} bpb"] = bits((scores.get(name) or {}).get("mean"))
    row |= {"Δ vs raw": comparison_text(comparison(variant, "raw")),
            "Δ vs previous step": comparison_text(comparison(variant, "previous")),
            "Δ vs full": comparison_text(comparison(variant, "full"))}
    return row


def threshold_rows(ablation: dict, group: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for variant in sorted(group, key=lambda variant: (variant.get("parameter") is None, variant.get("parameter"))):
        against_raw = comparison(variant, "raw") or {}
        rows.append({"parameter": parameter_text(variant.get("parameter")), "variant": label_of(variant),
                     "documents": variant.get("documents"), "unique tokens": variant.get("unique_tokens"),
                     "tokens kept of raw": share(against_raw.get("token_share")),
                     "target bpb": mean_and_spread(variant.get("target_bits_per_byte")),
                     "Δ vs raw": comparison_text(against_raw or None)})
    return rows


def batching_rows(ablation: dict, batching: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for variant in batching:
        row = {"batching": variant.get("batching"), "variant": label_of(variant),
               "tokens trained": variant.get("tokens_trained"),
               "epochs": None if variant.get("epochs") is None else f"{variant['epochs']:.2f}",
               "target bpb": mean_and_spread(variant.get("target_bits_per_byte"))}
        scores = variant.get("bits_per_byte") or {}
        for name in ablation.get("heldout") or []:
            row[f"{name} bpb"] = bits((scores.get(name) or {}).get("mean"))
        row |= {"Δ vs raw": comparison_text(comparison(variant, "raw")),
                "Δ vs full": comparison_text(comparison(variant, "full"))}
        rows.append(row)
    return rows


def timing_rows(seconds: dict) -> list[dict[str, Any]]:
    total = seconds.get("total")
    names = [name for name in TIMING_ORDER if name in seconds] + [name for name in seconds if name not in TIMING_ORDER]
    return [{"phase": name, "seconds": None if seconds[name] is None else f"{seconds[name]:,.1f}",
             "share of total": share(seconds[name] / total) if seconds[name] is not None and total else ""}
            for name in names]


def recommendation_line(ablation: dict, recommendation: dict) -> str:
    by_name = {variant.get("name"): variant for variant in variants_of(ablation)}

    def called(name: str | None) -> str:
        variant = by_name.get(name)
        return label_of(variant) if variant else str(name)

    line = (f"Recommended for {recommendation.get('group')}: {called(recommendation.get('best'))}"
            f" ({recommendation.get('column') or 'parameter'} {parameter_text(recommendation.get('parameter'))})")
    if recommendation.get("runner_up") is not None and recommendation.get("margin") is not None:
        line += (f"; the runner-up, {called(recommendation['runner_up'])}, scores {signed(recommendation['margin'])} "
                 f"target bits per byte more, {separated_words(recommendation.get('separated'), seed_count(ablation))}")
    return line + "."


# ---------------------------------------------------------------------------------------------------------------------
# Figures


def family_colour(family: str | None) -> str:
    return FAMILY_COLOURS.get(family or "", OTHER_COLOUR)


def frontier_points(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats by keeping at least as many unique tokens at a lower bpb, by tokens."""
    frontier, best = [], float("inf")
    for tokens, score in sorted(points, key=lambda point: (-point[0], point[1])):
        if score < best:
            frontier.append((tokens, score))
            best = score
    return sorted(frontier)


def frontier_figure(ablation: dict) -> plt.Figure | None:
    plotted = [variant for variant in variants_of(ablation)
               if target_mean(variant) is not None and variant.get("unique_tokens") is not None]
    if not plotted:
        return None
    logarithmic = all(variant["unique_tokens"] > 0 for variant in plotted)
    figure, axis = plt.subplots(figsize=(9, 5.5))
    for family in dict.fromkeys(variant.get("family") for variant in plotted):
        members = [variant for variant in plotted if variant.get("family") == family]
        axis.errorbar([variant["unique_tokens"] for variant in members], [target_mean(variant) for variant in members],
                      yerr=[(variant["target_bits_per_byte"].get("std") or 0.0) for variant in members], fmt="o",
                      capsize=3, markersize=7, color=family_colour(family),
                      label=FAMILY_NAMES.get(family or "", str(family)))
    for variant in plotted:
        axis.annotate(label_of(variant), (variant["unique_tokens"], target_mean(variant)), xytext=(5, 4),
                      textcoords="offset points", fontsize=7)
    frontier = frontier_points([(variant["unique_tokens"], target_mean(variant)) for variant in plotted])
    if len(frontier) > 1:
        tokens, scores = zip(*frontier)
        axis.plot(tokens, scores, linestyle="--", color="black", linewidth=1, alpha=0.6, label="frontier")
    if logarithmic:
        axis.set_xscale("log")
    axis.set(xlabel="unique tokens kept" + (" (log scale)" if logarithmic else ""),
             ylabel=f"target bits per byte ({ablation.get('target')})", title="held-out bits per byte against data kept")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def waterfall_steps(ablation: dict) -> list[dict]:
    """The cumulative steps in graph order, then the full recipe where it follows them as one more step (its
    `previous` is the last step: the rest of the recipe); none without cumulative steps."""
    steps = variants_of(ablation, "cumulative")
    if not steps:
        return []
    return steps + [variant for variant in variants_of(ablation, "full") if comparison(variant, "previous")]


def waterfall_figure(ablation: dict, steps: list[dict]) -> plt.Figure | None:
    """Floating bars: each cumulative step from the score before it to its own, with the interval of its delta."""
    by_name = {variant.get("name"): variant for variant in variants_of(ablation)}
    raw = next(iter(variants_of(ablation, "raw")), None)
    level = target_mean(raw)
    bars = []  # (label, bottom, delta, interval or None)
    for step in steps:
        against = comparison(step, "previous")
        if against and against.get("delta") is not None:
            bottom = target_mean(by_name.get(against.get("against")))
            bottom = level if bottom is None else bottom
            delta, interval = against["delta"], against.get("interval")
        else:
            bottom, delta, interval = level, None, None
            if level is not None and target_mean(step) is not None:
                delta = target_mean(step) - level
        if bottom is not None and delta is not None:
            bars.append((label_of(step), bottom, delta, interval))
            level = bottom + delta
        else:
            level = target_mean(step)
    if not bars:
        return None
    start = target_mean(raw)
    ends = [bottom + delta for _, bottom, delta, _ in bars]
    heights = [*(bottom for _, bottom, _, _ in bars), *ends, *([] if start is None else [start])]
    heights += [bottom + value for _, bottom, _, interval in bars for value in interval or ()]
    pad = 0.12 * max(max(heights) - min(heights), 1e-4)
    floor = min(heights) - 2 * pad  # the whole bars stand here, not on zero, or the deltas would not show
    figure, axis = plt.subplots(figsize=(max(6.0, 1.3 * len(bars) + 4), 4.5))
    positions = np.arange(1, len(bars) + 1)
    total_position = len(bars) + 1
    if start is not None:
        axis.bar(0, start - floor, 0.6, bottom=floor, color="tab:grey", alpha=0.8)
        axis.annotate(f"{start:.4f}", (0, start), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    for position, (_, bottom, delta, interval), end in zip(positions, bars, ends):
        axis.bar(position, delta, 0.6, bottom=bottom, color="tab:green" if delta < 0 else "tab:red", alpha=0.8)
        if interval is not None:
            low, high = sorted(interval)
            axis.errorbar(position, end, yerr=[[max(delta - low, 0.0)], [max(high - delta, 0.0)]], color="black",
                          capsize=4, linewidth=1)
        axis.annotate(signed(delta), (position, max(bottom, end)), xytext=(0, 3), textcoords="offset points",
                      ha="center", fontsize=8)
    axis.bar(total_position, ends[-1] - floor, 0.6, bottom=floor, color=family_colour("cumulative"), alpha=0.8)
    axis.annotate(f"{ends[-1]:.4f}", (total_position, ends[-1]), xytext=(0, 3), textcoords="offset points",
                  ha="center", fontsize=8)
    connectors = [*([] if start is None else [(0, start)]), *zip(positions, ends)]
    for position, level in connectors:
        axis.plot([position + 0.3, position + 0.7], [level, level], color="black", linewidth=0.8)
    ticks = [*([] if start is None else [(0, "raw")]), *zip(positions, [label for label, *_ in bars]),
             (total_position, "after all steps")]
    axis.set_xticks([position for position, _ in ticks], [label for _, label in ticks], rotation=20, ha="right")
    axis.set_ylim(floor, max(heights) + pad)
    axis.set(ylabel=f"target bits per byte ({ablation.get('target')})", title="each step's change, in graph order")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def threshold_figure(ablation: dict, group_name: str, group: list[dict], recommendation: dict | None) -> plt.Figure | None:
    plotted = sorted((variant for variant in group
                      if variant.get("parameter") is not None and target_mean(variant) is not None),
                     key=lambda variant: variant["parameter"])
    if not plotted:
        return None
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    axis.errorbar([variant["parameter"] for variant in plotted], [target_mean(variant) for variant in plotted],
                  yerr=[variant["target_bits_per_byte"].get("std") or 0.0 for variant in plotted], fmt="o-",
                  capsize=3, color=family_colour("threshold"), label=group_name)
    raw = target_mean(next(iter(variants_of(ablation, "raw")), None))
    if raw is not None:
        axis.axhline(raw, color="tab:grey", linestyle=":", linewidth=1, label="raw")
    best = next((variant for variant in plotted if recommendation and variant.get("name") == recommendation.get("best")),
                None)
    if best is not None:
        axis.plot([best["parameter"]], [target_mean(best)], marker="*", markersize=14, color="gold",
                  markeredgecolor="black", linestyle="none", label="recommended")
    column = (recommendation or {}).get("column")
    axis.set(xlabel=f"parameter ({column})" if column else "parameter",
             ylabel="target bits per byte", title=group_name)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def seed_order(seed: str) -> tuple[int, int, str]:
    """Seeds as numbers where they are numbers ("2" before "10"), any other key after them."""
    text = str(seed)
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def mean_curve(curves: dict[str, list]) -> tuple[np.ndarray, np.ndarray, str] | None:
    """The seeds' mean curve when every seed logged the same token positions, otherwise the first seed's."""
    seeds = sorted((seed for seed, points in curves.items() if points), key=seed_order)
    if not seeds:
        return None
    arrays = [np.asarray(curves[seed], dtype=float).reshape(-1, 2) for seed in seeds]
    if all(array.shape == arrays[0].shape and np.array_equal(array[:, 0], arrays[0][:, 0]) for array in arrays):
        return arrays[0][:, 0], np.mean([array[:, 1] for array in arrays], axis=0), "mean"
    return arrays[0][:, 0], arrays[0][:, 1], f"seed {seeds[0]}"


def loss_figure(ablation: dict) -> tuple[plt.Figure, set[str]] | None:
    drawn, kinds = [], set()
    for variant in variants_of(ablation):
        curve = mean_curve(variant.get("loss_curves") or {})
        if curve is not None:
            drawn.append((variant, curve))
            kinds.add(curve[2])
    if not drawn:
        return None
    figure, axis = plt.subplots(figsize=(10, 5))
    within_family: dict[str, int] = {}
    for variant, (tokens, loss, kind) in drawn:
        family = variant.get("family") or ""
        index = within_family[family] = within_family.get(family, -1) + 1
        axis.plot(tokens, loss, color=family_colour(family), linestyle=LINE_STYLES[index % len(LINE_STYLES)],
                  linewidth=1.4, label=label_of(variant) + ("" if kind == "mean" else f" ({kind})"))
    axis.set(xlabel="training tokens", ylabel="training loss", title="training loss")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure, kinds


# ---------------------------------------------------------------------------------------------------------------------
# The report


def build_report(ablation: dict) -> Report:
    """The report of one ablation (`ablation.json` as a dict)."""
    check_ablation(ablation)
    seeds = seed_count(ablation)
    report = Report(f"Ablation: {ablation.get('name') or 'unnamed'}", data={"ablation": ablation})

    report.section("Summary").table(setup_rows(ablation), ["setting", "value"])
    findings = ablation.get("findings") or []
    for finding in findings:
        report.text(finding)
    if not findings:
        report.text("The analysis wrote no findings.")

    report.section("Variants")
    variants = variants_of(ablation)
    if variants:
        report.text("Δ is this variant's target bits per byte minus the other's (negative is better), with its "
                    f"bootstrap interval over {plural(seeds, 'seed')}; {SEPARATED_MARK} marks a difference the "
                    "analysis found separated. bpb: mean ± standard deviation over seeds.")
        report.table([variant_row(ablation, variant) for variant in variants])
    else:
        report.text("No variants were trained.")

    report.section("Frontier")
    figure = frontier_figure(ablation)
    if figure is None:
        report.text("No variant has both a target score and a token count to plot.")
    else:
        report.figure(figure, "Target bits per byte (mean over seeds, standard deviation as error bars) against "
                      "the unique tokens each variant keeps, coloured by family. The dashed frontier "
                      "joins the variants that no other beats with more tokens kept at lower bpb: a team picks "
                      "along this lower-left edge, trading data kept for held-out bpb.")

    report.section("Per-stage waterfall")
    steps = waterfall_steps(ablation)
    figure = waterfall_figure(ablation, steps) if steps else None
    if not steps:
        report.text("This ablation has no cumulative steps, so there is no per-stage waterfall.")
    elif figure is None:
        report.text("The cumulative steps have no target scores to draw.")
    else:
        report.figure(figure, "From the raw baseline, each cumulative step in graph order (then the rest of the recipe, "
                      "where a full-recipe variant follows them) as a floating bar from "
                      "the score before it to its own (green lowers bpb, red raises it), whiskers the delta's "
                      "interval over seeds; the axis starts just below the lowest score, not at zero")

    report.section("Thresholds")
    groups: dict[str, list[dict]] = {}
    for variant in variants_of(ablation, "threshold"):
        groups.setdefault(variant.get("group") or "threshold", []).append(variant)
    recommendations = {recommendation.get("group"): recommendation
                       for recommendation in ablation.get("recommendations") or []}
    if not groups and not recommendations:
        report.text("This ablation swept no thresholds.")
    for group_name in [*groups, *(name for name in recommendations if name not in groups)]:
        group, recommendation = groups.get(group_name, []), recommendations.get(group_name)
        report.text(f"{group_name}: {plural(len(group), 'variant')}.")
        if group:
            report.table(threshold_rows(ablation, group))
        if recommendation is not None:
            report.text(recommendation_line(ablation, recommendation))
        figure = threshold_figure(ablation, group_name, group, recommendation)
        if figure is not None:
            report.figure(figure, f"{group_name}: target bits per byte against the parameter, the recommended "
                          "value starred")

    report.section("Batching")
    batching = variants_of(ablation, "batching")
    if batching:
        report.table(batching_rows(ablation, batching))
    else:
        report.text("This ablation compared no batching strategies.")

    report.section("Loss curves")
    drawn = loss_figure(ablation)
    if drawn is None:
        report.text("No loss curves were recorded.")
    else:
        figure, kinds = drawn
        shown = "the mean over seeds" if kinds == {"mean"} else \
            "the first seed" if "mean" not in kinds else "the mean over seeds, or the first seed where marked"
        report.figure(figure, f"Training loss against tokens, one line per variant ({shown}), coloured by family")

    report.section("Timing")
    seconds = ablation.get("seconds") or {}
    if seconds:
        report.table(timing_rows(seconds))
    else:
        report.text("No timings were recorded.")
    return report


def write_ablation_report(ablation: dict, directory: str | Path) -> dict[str, Path]:
    """report.html, report.md (figures beside it) and report.json (the ablation itself) in `directory`."""
    return build_report(ablation).write(directory)
