"""`gristmill tokenizer eval`: measure any number of tokenizers on one sample of a dataset and write the comparison.

Tokenizers are loaded first (a bad --tokenizer fails before any data is read); the sample is read once and shared,
so every number in the report compares tokenizers on the same documents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gristmill.tokenizer_eval.corpus import (
    measure_corpus,
    measure_parity,
    read_parallel,
)
from gristmill.tokenizer_eval.loading import EvalTokenizer, load_for_evaluation
from gristmill.tokenizer_eval.results import EvaluationOptions, TokenizerResult
from gristmill.tokenizer_eval.sample import SAMPLE_FILE, CorpusSample, sample_dataset
from gristmill.tokenizer_eval.vocabulary import analyse_vocabulary, core_coverage, core_words


def evaluate_tokenizers(specs: Sequence[str], dataset: str | Path, output: str | Path,
                        options: EvaluationOptions = EvaluationOptions(),
                        echo: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Measure each tokenizer, write report.html, report.md, figures/, report.json and the measured sample
    (sample.parquet) under `output`; return the JSON data."""
    # matplotlib loads only when a report is written
    from gristmill.tokenizer_eval.report import build_report

    tokenizers = load_for_evaluation(specs)
    parallel = read_parallel(options.parallel) if options.parallel else None
    sample = sample_dataset(dataset, options.sample_bytes, options.seed, options.domain_column)
    if not sample.texts:
        raise ValueError(f"{dataset}: the sample holds no documents with text")
    echo(f"sample: {len(sample.texts):,} documents, {sample.bytes:,} bytes, {sum(map(len, sample.words)):,} words")
    core = core_words(sample, sample.groups("languages", options.max_groups), options.core_words)
    results = []
    for tokenizer in tokenizers:
        result = evaluate_one(tokenizer, sample, core, parallel, options)
        seconds = result.corpus.seconds
        echo(f"{tokenizer.label}: vocabulary {tokenizer.vocab_size:,}, fertility "
             f"{result.corpus.overall.metrics()['fertility']:.3f}, {len(sample.texts) / seconds:,.0f} documents/s "
             f"({sample.bytes / seconds / 1e6:.2f} MB/s)")
        results.append(result)
    proxy = None
    if options.proxy:
        from gristmill.tokenizer_eval.proxy import run_proxies

        proxy = run_proxies(tokenizers, sample, Path(output) / "proxy", options.proxy, echo)
    report = build_report(results, sample, str(dataset), options, proxy)
    paths = report.write(output)
    sample.write_parquet(Path(output) / SAMPLE_FILE)
    echo(f"report: {paths['html']}")
    return report.data


def evaluate_one(tokenizer: EvalTokenizer, sample: CorpusSample, core: dict[str, list[tuple[str, int]]],
                 parallel: list[dict[str, str]] | None, options: EvaluationOptions) -> TokenizerResult:
    corpus = measure_corpus(tokenizer, sample, options.max_groups)
    parity = measure_parity(tokenizer, parallel, options.reference_language) if parallel else None
    return TokenizerResult(tokenizer, corpus, analyse_vocabulary(tokenizer.vocabulary()),
                           core_coverage(tokenizer, core), parity)
