"""Held-out evaluation of classifiers (precision, recall, F1, ROC-AUC, calibration, confusion) and score summaries.

Metrics are plain dicts so that one result feeds the model card, the JSON, the Markdown and the plot alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

CALIBRATION_BINS = 10
HISTOGRAM_BINS = 20
ROC_POINTS = 101
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if not precision or not recall:
        return 0.0 if precision is not None and recall is not None else None
    return 2 * precision * recall / (precision + recall)


def roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half): Mann-Whitney U."""
    positives = int(is_positive.sum())
    negatives = len(is_positive) - positives
    if not positives or not negatives:
        return None
    unique, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1
    average_rank = first_rank + (counts - 1) / 2
    rank_sum = average_rank[inverse][is_positive].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(is_positive: np.ndarray, scores: np.ndarray, points: int = ROC_POINTS) -> dict[str, list[float]]:
    """False and true positive rates at `points` thresholds evenly spaced over the score quantiles."""
    thresholds = np.unique(np.quantile(scores, np.linspace(0, 1, points)))[::-1]
    predicted = scores[None, :] >= thresholds[:, None]
    positives, negatives = max(int(is_positive.sum()), 1), max(int((~is_positive).sum()), 1)
    true_rate = (predicted & is_positive).sum(axis=1) / positives
    false_rate = (predicted & ~is_positive).sum(axis=1) / negatives
    return {"fpr": [0.0, *false_rate.tolist(), 1.0], "tpr": [0.0, *true_rate.tolist(), 1.0]}


def calibration_table(is_correct: np.ndarray, confidence: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Per equal-width bin of predicted probability: documents, mean prediction and observed rate."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    table = []
    for index in range(bins):
        members = which == index
        count = int(members.sum())
        table.append({
            "low": float(edges[index]), "high": float(edges[index + 1]), "count": count,
            "mean_predicted": float(confidence[members].mean()) if count else None,
            "observed_rate": float(is_correct[members].mean()) if count else None,
        })
    return table


def expected_calibration_error(table: list[dict[str, Any]]) -> float:
    total = sum(row["count"] for row in table)
    return float(sum(row["count"] * abs(row["mean_predicted"] - row["observed_rate"]) for row in table if row["count"]) / total)


def decision_metrics(is_positive: np.ndarray, scores: np.ndarray, cut: float, labels: list[str]) -> dict[str, Any]:
    """Counts, precision, recall, F1, accuracy and the confusion matrix of the decision `score >= cut` against the
    truth; a document without a score (NaN) counts as predicted negative."""
    is_positive = np.asarray(is_positive, bool)
    unscored = np.isnan(scores)
    predicted = np.where(unscored, False, scores >= cut)
    true_positive = int((predicted & is_positive).sum())
    false_positive = int((predicted & ~is_positive).sum())
    false_negative = int((~predicted & is_positive).sum())
    true_negative = int((~predicted & ~is_positive).sum())
    precision = _ratio(true_positive, true_positive + false_positive)
    recall = _ratio(true_positive, true_positive + false_negative)
    return {
        "documents": len(scores),
        "positives": int(is_positive.sum()),
        "negatives": int((~is_positive).sum()),
        "unscored": int(unscored.sum()),
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "accuracy": _ratio(true_positive + true_negative, len(scores)),
        "confusion_matrix": {"labels": labels,
                             "matrix": [[true_negative, false_positive], [false_negative, true_positive]]},
    }


def binary_metrics(is_positive: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of a score for the positive class against truth, predicting positive at score >= threshold.

    Documents without a score (NaN) count as predicted negative and are reported as `unscored`.
    """
    is_positive = np.asarray(is_positive, bool)
    scores = np.asarray(scores, np.float64)
    unscored = np.isnan(scores)
    scored_truth, scored = is_positive[~unscored], scores[~unscored]
    calibration = calibration_table(scored_truth, scored)
    return {
        "kind": "binary",
        **decision_metrics(is_positive, scores, threshold, ["negative", "positive"]),
        "threshold": threshold,
        "roc_auc": roc_auc(scored_truth, scored),
        "expected_calibration_error": expected_calibration_error(calibration) if len(scored) else None,
        "calibration": calibration,
        "roc_curve": roc_curve(scored_truth, scored) if len(scored) else None,
        "score_histograms": {
            "positive": score_distribution(scored[scored_truth])["histogram"],
            "negative": score_distribution(scored[~scored_truth])["histogram"],
        },
    }


def multiclass_metrics(true_labels: Sequence[str], probabilities: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Per-class precision/recall/F1/ROC-AUC (one vs rest), macro F1, confusion matrix and top-label calibration.

    `labels` names the probability columns; true labels the model does not know count as errors.
    """
    truth = np.asarray(list(true_labels), object)
    labels = list(labels)
    probabilities = np.nan_to_num(np.asarray(probabilities, np.float64), nan=0.0)
    predicted = np.asarray(labels, object)[probabilities.argmax(axis=1)] if len(truth) else np.empty(0, object)
    classes = labels + sorted(set(truth) - set(labels))
    per_class = {}
    for column, label in enumerate(labels):
        is_label, says_label = truth == label, predicted == label
        precision = _ratio(int((is_label & says_label).sum()), int(says_label.sum()))
        recall = _ratio(int((is_label & says_label).sum()), int(is_label.sum()))
        per_class[label] = {"support": int(is_label.sum()), "precision": precision, "recall": recall,
                            "f1": _f1(precision, recall), "roc_auc": roc_auc(is_label, probabilities[:, column])}
    confidence = probabilities.max(axis=1) if len(truth) else np.empty(0)
    calibration = calibration_table(predicted == truth, confidence)
    f1_scores = [row["f1"] for row in per_class.values() if row["support"] and row["f1"] is not None]
    return {
        "kind": "multiclass",
        "documents": len(truth),
        "accuracy": _ratio(int((predicted == truth).sum()), len(truth)),
        "macro_f1": float(np.mean(f1_scores)) if f1_scores else None,
        "per_class": per_class,
        "expected_calibration_error": expected_calibration_error(calibration) if len(truth) else None,
        "calibration": calibration,
        "confusion_matrix": {
            "labels": classes,
            "matrix": [[int(((truth == actual) & (predicted == guess)).sum()) for guess in classes] for actual in classes],
        },
    }


def score_distribution(scores: np.ndarray | pa.Array | pa.ChunkedArray | Sequence[float | None]) -> dict[str, Any]:
    """Summary of scores in [0, 1] for reports: count, missing, mean, spread, quantiles and a 20-bin histogram."""
    if isinstance(scores, (pa.Array, pa.ChunkedArray)):
        scores = scores.to_numpy(zero_copy_only=False)
    values = np.asarray([np.nan if value is None else value for value in scores] if isinstance(scores, list) else scores,
                        np.float64)
    present = values[~np.isnan(values)]
    counts, edges = np.histogram(present, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    summary: dict[str, Any] = {"count": len(values), "missing": int(len(values) - len(present))}
    if len(present):
        summary |= {"mean": float(present.mean()), "std": float(present.std()), "min": float(present.min()),
                    "max": float(present.max()),
                    "quantiles": {f"p{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, np.quantile(present, QUANTILES))}}
    summary["histogram"] = {"edges": edges.tolist(), "counts": counts.tolist()}
    return summary


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_markdown(metrics: dict[str, Any], title: str) -> str:
    """A short human report: headline numbers, confusion matrix and calibration table."""
    lines = [f"# {title}", ""]
    if metrics["kind"] == "binary":
        lines += ["| documents | positives | negatives | threshold | precision | recall | F1 | accuracy | ROC-AUC | ECE |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                  "| " + " | ".join(_number(metrics[key]) for key in (
                      "documents", "positives", "negatives", "threshold", "precision", "recall", "f1", "accuracy",
                      "roc_auc", "expected_calibration_error")) + " |"]
        if metrics["unscored"]:
            lines += ["", f"{metrics['unscored']} document(s) had no score and count as predicted negative."]
    else:
        lines += [f"Documents: {metrics['documents']}; accuracy {_number(metrics['accuracy'])}; "
                  f"macro F1 {_number(metrics['macro_f1'])}; ECE {_number(metrics['expected_calibration_error'])}.", "",
                  "| label | support | precision | recall | F1 | ROC-AUC |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {label} | " + " | ".join(_number(row[key]) for key in ("support", "precision", "recall", "f1", "roc_auc"))
                  + " |" for label, row in metrics["per_class"].items()]
    if "holdout" in metrics:
        holdout = metrics["holdout"]
        lines += ["", f"Held out by {holdout['group']}: documents sharing one stay on the same side of the split"
                  + (f"; {holdout['documents_split_by_text_hash']} without one were split by their text hash."
                     if holdout["group"] != "text hash" and holdout["documents_split_by_text_hash"] else ".")]
    confusion = metrics["confusion_matrix"]
    lines += ["", "## Confusion matrix (rows: truth, columns: prediction)", "",
              "| | " + " | ".join(confusion["labels"]) + " |", "|---|" + "---:|" * len(confusion["labels"])]
    lines += [f"| {label} | " + " | ".join(str(cell) for cell in row) + " |"
              for label, row in zip(confusion["labels"], confusion["matrix"])]
    what = "score of the positive class" if metrics["kind"] == "binary" else "probability of the predicted label"
    observed = "share positive" if metrics["kind"] == "binary" else "share correct"
    lines += ["", f"## Calibration ({what})", "", f"| bin | documents | mean predicted | {observed} |", "|---|---:|---:|---:|"]
    lines += [f"| {row['low']:.1f}–{row['high']:.1f} | {row['count']} | {_number(row['mean_predicted'])} | "
              f"{_number(row['observed_rate'])} |" for row in metrics["calibration"]]
    return "\n".join(lines) + "\n"


def plot_metrics(metrics: dict[str, Any], path: Path, title: str) -> None:
    """ROC curve, score histograms and reliability diagram (binary) or confusion matrix and reliability (multi-class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if metrics["kind"] == "binary" else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.5))
    if metrics["kind"] == "binary":
        roc, curve = axes[0], metrics["roc_curve"]
        if curve:
            roc.plot(curve["fpr"], curve["tpr"], label=f"AUC {_number(metrics['roc_auc'])}")
        roc.plot([0, 1], [0, 1], linestyle=":", color="grey")
        roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
        roc.legend(loc="lower right")
        histogram = axes[1]
        for name, color in (("negative", "tab:red"), ("positive", "tab:blue")):
            bars = metrics["score_histograms"][name]
            histogram.stairs(bars["counts"], bars["edges"], label=name, color=color)
        histogram.set(xlabel="score", ylabel="documents", title="Scores by true class")
        histogram.legend()
    else:
        confusion = np.asarray(metrics["confusion_matrix"]["matrix"])
        names = metrics["confusion_matrix"]["labels"]
        axes[0].imshow(confusion, cmap="Blues")
        axes[0].set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true",
                    title="Confusion matrix")
        axes[0].set_xticklabels(names, rotation=45, ha="right")
        axes[0].set_yticklabels(names)
        for (row, column), value in np.ndenumerate(confusion):
            axes[0].text(column, row, str(value), ha="center", va="center")
    reliability = axes[-1]
    filled = [row for row in metrics["calibration"] if row["count"]]
    reliability.plot([0, 1], [0, 1], linestyle=":", color="grey")
    reliability.plot([row["mean_predicted"] for row in filled], [row["observed_rate"] for row in filled], marker="o")
    reliability.set(xlabel="mean predicted", ylabel="observed rate", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_evaluation(metrics: dict[str, Any], directory: Path, title: str) -> dict[str, Path]:
    """metrics.json, metrics.md and metrics.png in `directory`; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "metrics.json", "markdown": directory / "metrics.md", "plot": directory / "metrics.png"}
    paths["json"].write_text(json.dumps(metrics, indent=2) + "\n")
    paths["markdown"].write_text(metrics_markdown(metrics, title))
    plot_metrics(metrics, paths["plot"], title)
    return paths


def grade_metrics(grades: np.ndarray, scores: np.ndarray, threshold: float, output: str,
                  predicted_grades: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics of a classifier trained on grades against the true grades of held-out documents.

    `output` is what the score is: "grade" (a predicted or expected grade, positive when >= threshold) or
    "probability" (of a grade >= threshold, positive when >= 0.5). Accuracy, precision, recall and F1 are of that
    binarised decision; Spearman is of the score against the grades, whatever the score is. `predicted_grades`
    (integers) adds a per-grade confusion matrix and the share of exactly right grades. Documents without a score
    (NaN) count as predicted negative and are reported as `unscored`.
    """
    from scipy.stats import spearmanr

    grades = np.asarray(grades, np.float64)
    scores = np.asarray(scores, np.float64)
    cut = threshold if output == "grade" else 0.5
    unscored = np.isnan(scores)
    scored_grades, scored = grades[~unscored], scores[~unscored]
    varied = len(scored) > 1 and np.ptp(scored) > 0 and np.ptp(scored_grades) > 0
    metrics: dict[str, Any] = {
        "kind": "grades",
        "score": output,
        **decision_metrics(grades >= threshold, scores, cut, [f"grade < {threshold:g}", f"grade >= {threshold:g}"]),
        "threshold": threshold,
        "decision": f"score >= {cut:g}",
        "spearman": float(spearmanr(scored_grades, scored).statistic) if varied else None,
        "mean_absolute_error": float(np.abs(scored - scored_grades).mean()) if output == "grade" and len(scored) else None,
    }
    if predicted_grades is not None:
        truth = np.rint(grades).astype(np.int64)
        guess = np.asarray(predicted_grades, np.int64)
        classes = sorted(set(truth.tolist()) | set(guess[~unscored].tolist()))
        metrics["grade_accuracy"] = _ratio(int(((truth == guess) & ~unscored).sum()), len(truth))
        metrics["grade_confusion_matrix"] = {
            "labels": [str(grade) for grade in classes],
            "matrix": [[int(((truth == actual) & (guess == said) & ~unscored).sum()) for said in classes]
                       for actual in classes],
        }
    return metrics


def write_grade_evaluation(metrics: dict[str, Any], directory: Path, title: str, grades: np.ndarray | None = None,
                           scores: np.ndarray | None = None) -> dict[str, Path]:
    """The evaluation of a classifier trained on grades: report.html, report.md (with figures/) and report.json from
    `Report`, and metrics.json beside them; with the held-out `grades` and `scores`, a plot of scores per grade.
    Returns the paths."""
    from gristmill.pipeline.engine.report import Report, plt

    report = Report(title, {"metrics": metrics})
    report.section("Held-out metrics")
    what = ("a grade (predicted by a regression head, or expected under a per-grade classifier's probabilities)"
            if metrics["score"] == "grade" else "the probability of a grade >= threshold")
    report.text(f"The score is {what}; "
                f"a document counts as positive when its grade is >= {metrics['threshold']:g} and is predicted positive "
                f"when {metrics['decision']}." + (f" {metrics['unscored']} document(s) had no score and count as "
                                                   "predicted negative." if metrics["unscored"] else ""))
    headline = ("documents", "positives", "negatives", "accuracy", "precision", "recall", "f1", "spearman",
                "mean_absolute_error", "grade_accuracy")
    report.table([{key: metrics.get(key) for key in headline if key in metrics}])
    if "holdout" in metrics:
        holdout = metrics["holdout"]
        report.text(f"Held out by {holdout['group']}: documents sharing one stay on the same side of the split.")
    for key, caption in (("confusion_matrix", "Confusion matrix at the threshold (rows: truth, columns: prediction)"),
                         ("grade_confusion_matrix", "Confusion matrix per grade (rows: true grade, columns: predicted grade)")):
        if key in metrics:
            confusion = metrics[key]
            report.section(caption)
            report.table([{"": label, **dict(zip(confusion["labels"], row))}
                          for label, row in zip(confusion["labels"], confusion["matrix"])], ["", *confusion["labels"]])
    if grades is not None and scores is not None and len(grades):
        rounded, scored = np.rint(np.asarray(grades, np.float64)).astype(np.int64), ~np.isnan(scores)
        present = sorted(set(rounded[scored].tolist()))
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.boxplot([scores[scored & (rounded == grade)] for grade in present], tick_labels=[str(g) for g in present])
        axis.set(xlabel="true grade", ylabel="score", title="Held-out scores by true grade")
        report.section("Scores by true grade").figure(figure, "Held-out scores by true grade (rounded)")
    paths = report.write(directory)
    paths["json_metrics"] = directory / "metrics.json"
    paths["json_metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
    return paths
