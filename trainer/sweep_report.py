"""The sweep report: runs, predicted against actual with ρ, the optimum with intervals beside the prior, loss by weight.

Written with the shared report writer, so it is one self-contained HTML file plus Markdown and JSON.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gristmill.pipeline.engine.report import Report, plt

SECTIONS = ("Summary", "Runs", "Predicted against actual", "Optimum", "Loss against each component's weight")
CMR_SECTION = "Critical mixture ratio"


def runs_table(summary: dict) -> list[dict]:
    rows = []
    for run in summary["runs"]:
        row = {"run": run["name"]}
        row |= {f"w {name}": round(run["weights"][name], 3) for name in summary["components"]}
        row |= {f"bpb {name}": round(run["bits_per_byte"][name], 4) for name in summary["heldout"]}
        row |= {f"target ({summary['target']})": round(run["target_bits_per_byte"], 4),
                "seconds": round(run["seconds"], 1)}
        rows.append(row)
    return rows


def predicted_figure(summary: dict, analysis: dict) -> plt.Figure:
    actual = np.array([run["target_bits_per_byte"] for run in summary["runs"]])
    kinds = list(analysis["predictors"])
    figure, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 4), squeeze=False)
    low, high = actual.min(), actual.max()
    pad = 0.05 * max(high - low, 1e-6)
    for axis, kind in zip(axes[0], kinds):
        result = analysis["predictors"][kind]
        axis.scatter(actual, result["held_out_predictions"], color="tab:blue", label="held out (k-fold)")
        axis.scatter(actual, result["fitted_predictions"], color="tab:orange", marker="x", label="fitted on all")
        axis.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", linewidth=1, linestyle="--")
        axis.set(title=f"{kind}: held-out ρ = {result['spearman']:.3f}", xlabel="actual bits per byte",
                 ylabel="predicted bits per byte")
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def optimum_rows(summary: dict, analysis: dict) -> list[dict]:
    chosen = analysis["predictors"][analysis["chosen"]]
    rows = []
    for name in summary["components"]:
        row = {"component": name, "natural prior": round(summary["natural_prior"][name], 3),
               "optimum": round(chosen["optimum"][name], 3)}
        if "optimum_interval" in chosen:
            row |= {"interval low": round(chosen["optimum_interval"][name][0], 3),
                    "interval high": round(chosen["optimum_interval"][name][1], 3)}
        row["repetition cap"] = round(summary["weight_caps"][name], 3)
        rows.append(row)
    return rows


def optimum_figure(summary: dict, analysis: dict) -> plt.Figure:
    names = summary["components"]
    chosen = analysis["predictors"][analysis["chosen"]]
    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(max(5, 1.4 * len(names) + 2), 4))
    axis.bar(positions - 0.2, [summary["natural_prior"][name] for name in names], 0.4, color="tab:grey",
             label="natural prior")
    optimum = np.array([chosen["optimum"][name] for name in names])
    errors = None
    if "optimum_interval" in chosen:
        bounds = np.array([chosen["optimum_interval"][name] for name in names])
        errors = np.abs(np.stack([optimum - bounds[:, 0], bounds[:, 1] - optimum]))
    axis.bar(positions + 0.2, optimum, 0.4, yerr=errors, capsize=4, color="tab:green",
             label=f"predicted optimum ({analysis['chosen']})")
    axis.set_xticks(positions, names)
    axis.set(ylabel="weight (share of tokens)", title="optimum against the natural prior")
    axis.legend()
    figure.tight_layout()
    return figure


def weight_figure(summary: dict) -> plt.Figure:
    names = summary["components"]
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.8), squeeze=False, sharey=True)
    markers = "osd^v<>p*h"
    for axis, name in zip(axes[0], names):
        weights = [run["weights"][name] for run in summary["runs"]]
        for position, heldout in enumerate(summary["heldout"]):
            axis.scatter(weights, [run["bits_per_byte"][heldout] for run in summary["runs"]],
                         marker=markers[position % len(markers)], label=heldout, alpha=0.8)
        axis.set(xlabel=f"weight of {name}", title=name)
    axes[0][0].set_ylabel("bits per byte")
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    return figure


def cmr_figure(summary: dict, cmr: dict) -> plt.Figure:
    from gristmill.trainer.predict import share_law

    ratio = np.array(cmr["ratios"])
    grid = np.linspace(ratio.min(), min(ratio.max(), 0.99), 200)  # the fits only where the runs are
    observed = [run["bits_per_byte"][name] for run in summary["runs"]
                for name in (cmr["general_heldout"], cmr["domain_heldout"])]
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for heldout, fit, share, color in ((cmr["general_heldout"], cmr["general_fit"], 1 - grid, "tab:blue"),
                                       (cmr["domain_heldout"], cmr["domain_fit"], grid, "tab:red")):
        axis.scatter(ratio, [run["bits_per_byte"][heldout] for run in summary["runs"]], color=color,
                     label=f"{heldout} (runs)")
        if fit:
            axis.plot(grid, share_law(share, fit["floor_loss"], fit["scale"], fit["exponent"]), color=color,
                      label=f"{heldout} fit: E + B·share^-{fit['exponent']:.2f}")
    if cmr["critical_ratio"] is not None:
        axis.axvline(cmr["critical_ratio"], color="black", linestyle="--",
                     label=f"critical ratio {cmr['critical_ratio']:.2f}")
        axis.axhline(cmr["general_loss_limit"], color="tab:blue", linestyle=":", linewidth=1,
                     label=f"general loss limit (+{cmr['tolerance']:.0%})")
    pad = 0.1 * max(np.ptp(observed), 1e-3)
    axis.set(xlabel=f"domain ratio ({' + '.join(cmr['domain'])})", ylabel="bits per byte",
             title="loss against domain ratio", ylim=(min(observed) - pad, max(observed) + pad))
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def build_report(summary: dict, analysis: dict) -> Report:
    """The report of a collected sweep (`run_sweep`) and its analysis (`predict_sweep`)."""
    chosen = analysis["chosen"]
    best = analysis["predictors"][chosen]
    report = Report("Mixture sweep", data={"sweep": summary, "analysis": analysis})
    interval = best.get("optimum_loss_interval")
    report.section("Summary").text(
        f"{len(summary['runs'])} mixtures of {len(summary['components'])} components "
        f"({', '.join(summary['components'])}), {summary['tokens_per_run']:,} training tokens per run, "
        f"seeds {', '.join(map(str, summary['seeds']))}; target: {summary['target']} bits per byte.")
    report.text(
        f"Chosen predictor: {chosen} (highest {analysis['folds']}-fold held-out Spearman ρ, {best['spearman']:.3f}). "
        f"Its optimum, the mean of the {analysis['top']} best of {analysis['simulated']:,} simulated mixtures, "
        f"is predicted at {best['optimum_loss']:.4f} bits per byte"
        + (f" ({analysis['confidence']:.0%} bootstrap interval {interval[0]:.4f}–{interval[1]:.4f}, "
           f"{analysis['bootstrap']} refits)." if interval else "."))
    report.section("Runs").table(runs_table(summary))
    report.section("Predicted against actual").table(
        [{"predictor": kind, "held-out Spearman ρ": round(result["spearman"], 3),
          "predicted optimum loss": round(result["optimum_loss"], 4),
          **{f"optimum {name}": round(result["optimum"][name], 3) for name in summary["components"]}}
         for kind, result in analysis["predictors"].items()])
    report.figure(predicted_figure(summary, analysis),
                  "Predicted against actual target bits per byte: k-fold held-out and fitted on every run")
    report.section("Optimum").table(optimum_rows(summary, analysis))
    report.figure(optimum_figure(summary, analysis),
                  f"Optimum weights of {chosen} with {analysis['confidence']:.0%} bootstrap intervals, "
                  "beside the natural prior")
    report.section("Loss against each component's weight").figure(
        weight_figure(summary), "Bits per byte of every held-out set against each component's weight")
    if "cmr" in analysis:
        cmr = analysis["cmr"]
        critical = "not found (the general-loss fit failed)" if cmr["critical_ratio"] is None else \
            f"{cmr['critical_ratio']:.3f}"
        report.section(CMR_SECTION).text(
            f"Domain group: {', '.join(cmr['domain'])}; general held-out set {cmr['general_heldout']}, domain held-out "
            f"set {cmr['domain_heldout']}. Critical mixture ratio: {critical}, the largest domain ratio whose fitted "
            f"general loss stays within {cmr['tolerance']:.0%} of its value with no domain data.")
        report.table([{"group": group, **(cmr[f"{group}_fit"] or {"fit": "failed"})} for group in ("general", "domain")])
        report.figure(cmr_figure(summary, cmr), "Loss against domain ratio, power-law fits and the critical ratio")
    return report


def write_sweep_report(summary: dict, analysis: dict, directory: str | Path) -> dict[str, Path]:
    """report.html, report.md (figures beside it) and report.json in `directory`."""
    return build_report(summary, analysis).write(directory)
