"""The tokenizer comparison report: tables, plots and machine-readable JSON, written with the shared report writer.

report.json's `summary` (one row per tokenizer, overall metrics) is the contract the run report reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.pipeline.engine.report import Report, plt
from gristmill.tokenizer_eval.corpus import METRICS, RENYI_ALPHA, Tally
from gristmill.tokenizer_eval.results import EvaluationOptions, TokenizerResult
from gristmill.tokenizer_eval.sample import OTHER, SAMPLE_FILE, CorpusSample
from gristmill.tokenizer_eval.vocabulary import CATEGORIES
from gristmill.tokenizer_eval.words import UNSPACED_SCRIPTS

FORMAT = "gristmill.tokenizer_eval"
VERSION = 1
TOP_SCRIPTS = 8
Proxy = tuple[list[dict[str, Any]], list[str]]  # rows per trained tokenizer, notes on skipped ones
COUNT_COLUMNS = ("documents", "words", "tokens")
METRIC_LABELS = {
    "fertility": "tokens per word", "proportion_continued_words": "words split", "bytes_per_token": "bytes per token",
    "chars_per_token": "characters per token", "vocabulary_utilisation": "vocabulary used",
    "shannon_efficiency": "Shannon efficiency", "renyi_efficiency": f"Rényi efficiency (α={RENYI_ALPHA})",
}


def clean(value: Any) -> Any:
    """JSON-safe numbers: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: clean(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clean(item) for item in value]
    return value


def same_path(first: str, second: str) -> bool:
    return Path(first).resolve() == Path(second).resolve()


def group_rows(results: Sequence[TokenizerResult], dimension: str, column: str) -> list[dict[str, Any]]:
    """One row per (group, tokenizer), groups in the order of their size in the sample."""
    first: dict[str, Tally] = getattr(results[0].corpus, dimension)
    order = sorted(first, key=lambda name: -first[name].bytes)
    return [{column: name, "tokenizer": result.tokenizer.label, **getattr(result.corpus, dimension)[name].metrics()}
            for name in order for result in results if name in getattr(result.corpus, dimension)]


def report_data(results: Sequence[TokenizerResult], sample: CorpusSample, dataset: str,
                options: EvaluationOptions, proxy: Proxy | None = None) -> dict[str, Any]:
    summary, tokenizers, vocabulary, coverage, parity = [], [], [], [], []
    for result in results:
        tokenizer, overall = result.tokenizer, result.corpus.overall.metrics()
        summary.append({"tokenizer": tokenizer.label, "vocab_size": tokenizer.vocab_size,
                        **{name: overall[name] for name in METRICS}})
        seconds = result.corpus.seconds
        trained_here = tokenizer.training_dataset is not None and same_path(tokenizer.training_dataset, dataset)
        tokenizers.append({**tokenizer.describe(), "trained_on_this_dataset": trained_here,
                           **{name: overall[name] for name in COUNT_COLUMNS},
                           "seconds": round(seconds, 3), "documents_per_second": len(sample.texts) / seconds,
                           "megabytes_per_second": sample.bytes / seconds / 1e6})
        vocabulary.append({"tokenizer": tokenizer.label, **result.vocabulary})
        coverage += [{"language": language, "tokenizer": tokenizer.label, **values}
                     for language, values in result.coverage.items()]
        parity += [{"language": language, "tokenizer": tokenizer.label, **values}
                   for language, values in (result.parity or {}).items()]
    data = {
        "format": FORMAT, "version": VERSION, "dataset": dataset,
        "sample": {"documents": len(sample.texts), "bytes": sample.bytes, "words": int(sum(map(len, sample.words))),
                   "documents_read": sample.documents_read, "sample_bytes": options.sample_bytes, "seed": options.seed,
                   "domain_column": sample.domain_column, "file": SAMPLE_FILE,
                   "folded": {dimension: sample.folded(dimension, options.max_groups)
                              for dimension in ("languages", "domains")}},
        "renyi_alpha": RENYI_ALPHA, "summary": summary, "tokenizers": tokenizers,
        "languages": group_rows(results, "languages", "language"),
        "domains": group_rows(results, "domains", "domain"),
        "vocabulary": vocabulary, "core_coverage": coverage,
    }
    if options.parallel:
        data["parity"] = parity
        data["parity_reference"] = options.reference_language
    if proxy is not None:
        data["proxy"], data["proxy_skipped"] = proxy
    return clean(data)


def grouped_bars(axis: plt.Axes, groups: list[str], series: dict[str, list[float]], title: str) -> None:
    width = 0.8 / max(len(series), 1)
    positions = np.arange(len(groups))
    for index, (label, values) in enumerate(series.items()):
        axis.bar(positions + index * width - 0.4 + width / 2, [np.nan if v is None else v for v in values], width,
                 label=label)
    axis.set_xticks(positions, groups, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)


def metric_figure(rows: list[dict[str, Any]], column: str, metrics: Sequence[str], labels: list[str]) -> plt.Figure:
    groups = list(dict.fromkeys(row[column] for row in rows))
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        values = {(row[column], row["tokenizer"]): row[metric] for row in rows}
        grouped_bars(axis, groups, {label: [values.get((group, label)) for group in groups] for label in labels},
                     METRIC_LABELS.get(metric, metric))
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    return figure


def share_figure(shares: dict[str, dict[str, float]], title: str) -> plt.Figure:
    """Stacked horizontal bars: for each tokenizer, the share of its vocabulary in each part."""
    labels = list(shares)
    parts = list(dict.fromkeys(part for values in shares.values() for part in values))
    figure, axis = plt.subplots(figsize=(10, 1.2 + 0.6 * len(labels)))
    left = np.zeros(len(labels))
    colours = plt.get_cmap("tab20").colors
    for index, part in enumerate(parts):
        widths = np.array([shares[label].get(part, 0.0) for label in labels])
        axis.barh(labels, widths, left=left, label=part, color=colours[index % len(colours)])
        left += widths
    axis.set_xlim(0, 1)
    axis.set_xlabel("share of vocabulary")
    axis.set_title(title)
    axis.legend(ncol=4, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return figure


def rank_frequency_figure(results: Sequence[TokenizerResult]) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for result in results:
        counts = np.sort(result.corpus.overall.counts[result.corpus.overall.counts > 0])[::-1]
        axis.loglog(np.arange(1, len(counts) + 1), counts / counts.sum(), label=result.tokenizer.label)
    axis.set_xlabel("token rank in the sample")
    axis.set_ylabel("probability")
    axis.set_title("Unigram distribution of tokens")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize="small")
    return figure


def build_report(results: Sequence[TokenizerResult], sample: CorpusSample, dataset: str,
                 options: EvaluationOptions, proxy: Proxy | None = None) -> Report:
    data = report_data(results, sample, dataset, options, proxy)
    labels = [result.tokenizer.label for result in results]
    report = Report("Tokenizer comparison", data)
    report.section("Summary").text(
        f"{len(results)} tokenizers on a seeded sample of {dataset}: {len(sample.texts):,} documents, "
        f"{sample.bytes:,} bytes, {data['sample']['words']:,} words (seed {options.seed}). The measured documents "
        f"(id, lang, domain, text) are in {SAMPLE_FILE} beside this report.")
    report.table([{**row, "documents/s": info["documents_per_second"]}
                  for row, info in zip(data["summary"], data["tokenizers"])])
    in_sample = [info["tokenizer"] for info in data["tokenizers"] if info.get("trained_on_this_dataset")]
    if in_sample:
        report.text(f"In sample: {', '.join(in_sample)} {'was' if len(in_sample) == 1 else 'were'} trained on this dataset, so it is measured partly on its own "
                    "training text, which flatters it against the others.")
    report.figure(metric_figure([{**row, "sample": "whole sample"} for row in data["summary"]], "sample",
                                ["fertility", "proportion_continued_words", "bytes_per_token", "renyi_efficiency"],
                                labels), "Overall metrics per tokenizer")
    report.figure(rank_frequency_figure(results), "Rank-frequency of token ids in the sample (log-log)")
    for dimension, column, title in (("languages", "language", "Per language"), ("domains", "domain", "Per domain")):
        rows = data[dimension]
        report.section(title)
        if dimension == "domains":
            report.text(f"Domains are the dataset's {sample.domain_column or 'domain'} column.")
        folded = list(data["sample"]["folded"][dimension].items())
        shown = f"The {options.max_groups} largest {dimension} by bytes are shown"
        if folded:
            shares = ", ".join(f"{name} ({size / sample.bytes:.1%})" for name, size in folded[:20])
            shown += f"; {OTHER} holds the {len(folded)} smaller: {shares}{', …' if len(folded) > 20 else ''}"
        report.text(shown + ".")
        report.table(rows, [column, "tokenizer", *COUNT_COLUMNS, *METRICS])
        report.figure(metric_figure(rows, column, ["fertility", "bytes_per_token"], labels),
                      f"Fertility and bytes per token {title.lower()}")
    if "parity" in data:
        report.section(f"Parity against {options.reference_language}")
        report.text(f"Tokens of each language's segments divided by the tokens of the same segments in "
                    f"{options.reference_language} (parallel text from {options.parallel}); 1 means as cheap.")
        report.table(data["parity"], ["language", "tokenizer", "segments", "tokens", "reference_tokens", "parity"])
        if data["parity"]:
            report.figure(metric_figure(data["parity"], "language", ["parity"], labels),
                          f"Parity against {options.reference_language}")
    add_vocabulary_section(report, data)
    if "proxy" in data:
        add_proxy_section(report, data, options)
    report.section("Method").text(
        "Words are runs of letters, marks, digits and underscores; in scripts written without spaces "
        f"({', '.join(UNSPACED_SCRIPTS)}) each character with its combining marks is one word. Fertility is all "
        "tokens (punctuation and whitespace included) per word. Efficiencies are entropies of the sample's "
        f"token-id distribution divided by log |V| over the full vocabulary; Rényi α = {RENYI_ALPHA}. "
        "Definitions: docs/TOKENIZER_EVAL.md.")
    return report


def add_vocabulary_section(report: Report, data: dict[str, Any]) -> None:
    report.section("Vocabulary")
    report.table([{"tokenizer": row["tokenizer"], "tokens": row["tokens"], **row["categories"]}
                  for row in data["vocabulary"]], ["tokenizer", "tokens", *CATEGORIES])
    report.figure(share_figure({row["tokenizer"]: {name: count / row["tokens"] for name, count in row["categories"].items()}
                                for row in data["vocabulary"]}, "Token categories"), "Token categories per tokenizer")
    scripts: dict[str, dict[str, float]] = {}
    for row in data["vocabulary"]:
        top = list(row["scripts"].items())[:TOP_SCRIPTS]
        shares = {name: count / row["tokens"] for name, count in top}
        shares["(other scripts)"] = max(0.0, 1 - sum(shares.values()))
        scripts[row["tokenizer"]] = shares
    report.table([{"tokenizer": label, **{name: f"{share:.1%}" for name, share in shares.items()}}
                  for label, shares in scripts.items()],
                 ["tokenizer", *dict.fromkeys(name for shares in scripts.values() for name in shares)])
    report.figure(share_figure(scripts, "Unicode scripts"), "Unicode scripts of the vocabulary")
    report.text("Core coverage: of each language's most frequent words in the sample, the share that the tokenizer "
                "holds as one token (alone or after a space), by word and by occurrence.")
    report.table(data["core_coverage"], ["language", "tokenizer", "core_words", "single_token_share",
                                         "single_token_share_by_occurrence"])


def add_proxy_section(report: Report, data: dict[str, Any], options: EvaluationOptions) -> None:
    """Held-out bits per byte of one small GPT per tokenizer at fixed compute, beside the corpus metrics."""
    settings = options.proxy
    summary = {row["tokenizer"]: row for row in data["summary"]}
    rows = [{**row, **{name: summary[row["tokenizer"]][name] for name in ("fertility", "bytes_per_token",
                                                                           "renyi_efficiency")}}
            for row in data["proxy"]]
    report.section("Proxy runs at fixed compute")
    report.text(f"One {settings.model} GPT per tokenizer, trained for {settings.steps} steps of "
                f"{settings.tokens_per_step:,} tokens (sequence length {settings.seq_len}, seed {settings.seed}) on 90% of "
                "the sample and scored in bits per byte on the other 10%; lower is better. The same token budget "
                "costs the same compute apart from the output layer, which grows with the vocabulary.")
    report.table(rows, ["tokenizer", "vocab_size", "training_tokens", "bits_per_byte", "fertility", "bytes_per_token",
                        "renyi_efficiency"])
    for note in data["proxy_skipped"]:
        report.text(f"Not trained: {note}.")
    if rows:
        figure, axes = plt.subplots(1, 2, figsize=(10, 4))
        for axis, metric in zip(axes, ("bytes_per_token", "renyi_efficiency")):
            axis.scatter([row[metric] for row in rows], [row["bits_per_byte"] for row in rows])
            for row in rows:
                axis.annotate(row["tokenizer"], (row[metric], row["bits_per_byte"]), fontsize="small")
            axis.set_xlabel(METRIC_LABELS[metric])
            axis.set_ylabel("held-out bits per byte")
            axis.grid(alpha=0.3)
        figure.tight_layout()
        report.figure(figure, "Proxy bits per byte against bytes per token and Rényi efficiency")
