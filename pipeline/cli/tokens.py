"""Token commands: train a tokenizer, export decomposed datasets to shuffled Megatron buckets, verify, mix.

The work is library code (pipeline/tokens/export.py, pipeline/tokens/mixture.py, stages/tokens/tokenization.py);
these commands parse options, call it and print what it returns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gristmill.pipeline.cli.options import PathsOption, fail, input_option, owned_output
from gristmill.pipeline.cli.tokenizer import evaluate as evaluate_tokenizers
from gristmill.pipeline.engine.dataset import DatasetError, is_dataset_directory
from gristmill.pipeline.engine.files import as_location
from gristmill.pipeline.engine.verify import verify_dataset
from gristmill.pipeline.tokens.export import PORTRAIT_FILE, ExportError, export_buckets, verify_export
from gristmill.stages.dedup.portrait import DEFAULT_FPR
from gristmill.stages.tokens.tokenization import TokenizerError, train_from_dataset


@click.group()
def tokenizer() -> None:
    """Train and inspect tokenizers (local files only; nothing is downloaded)."""


@tokenizer.command("train")
@input_option("dataset", "The dataset whose texts are sampled.", metavar="DATASET", single=True, file_okay=False)
@click.option("--vocab-size", type=click.IntRange(min=260), required=True, help="Vocabulary size, special tokens included.")
@click.option("--output", type=click.Path(file_okay=False), required=True, callback=owned_output,
              help="Directory for tokenizer.json, tokenizer_config.json and training.json.")
@click.option("--sample-bytes", type=click.IntRange(min=1), default=100_000_000, show_default=True,
              help="Text to train on: a seeded sample of the dataset's documents up to this many bytes.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Which documents are sampled.")
@click.option("--min-frequency", type=click.IntRange(min=1), default=2, show_default=True,
              help="Merge only pairs seen at least this often.")
@click.option("--eos-token", default="<|endoftext|>", show_default=True, help="End-of-document special token.")
def train(dataset: str, vocab_size: int, output: str, sample_bytes: int, seed: int, min_frequency: int,
          eos_token: str) -> None:
    """Train a byte-level BPE on a seeded sample of DATASET's texts, offline."""
    try:
        trained, sample = train_from_dataset(dataset, vocab_size, Path(output), sample_bytes, seed, min_frequency, eos_token)
    except (DatasetError, TokenizerError) as error:
        fail(str(error))
    click.echo(f"trained on {sample.documents:,} documents, {sample.bytes:,} bytes")
    click.echo(f"vocabulary {trained.vocab_size:,}, eos {trained.eos_token!r} = {trained.eos_id}")
    click.echo(f"fingerprint {trained.fingerprint}")
    click.echo(f"saved to {output}")


@click.command()
@input_option("dataset", "The decomposed dataset to export.", metavar="DATASET", single=True, file_okay=False)
@click.option("--output", type=click.Path(file_okay=False), required=True, callback=owned_output, help="Directory for the bucket files.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the shuffle.")
@click.option("--memory-mb", type=click.IntRange(min=16), default=1024, show_default=True,
              help="Memory for sorting one shuffle partition; more partitions (same bytes out) when smaller.")
@click.option("--portrait", "with_portrait", is_flag=True,
              help=f"Also write {PORTRAIT_FILE}, a sketch of the exported text (see `gristmill portrait`), "
                   f"recorded in stats.json.")
@click.option("--portrait-fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None, metavar="RATE",
              help=f"The sketch's false-positive rate per 50-character window (implies --portrait; default {DEFAULT_FPR}).")
def export(dataset: str, output: str, seed: int, memory_mb: int, with_portrait: bool, portrait_fpr: float | None) -> None:
    """Write a decomposed DATASET as shuffled Megatron .bin/.idx files, one per bucket, with sidecars and stats.json."""
    if with_portrait and portrait_fpr is None:
        portrait_fpr = DEFAULT_FPR
    try:
        stats = export_buckets(dataset, output, seed, memory_mb << 20, portrait_fpr)
    except (ExportError, DatasetError) as error:
        fail(str(error))
    except OSError as error:
        fail(f"{getattr(error, 'filename', '') or output}: {error.strerror or error}")
    click.echo(f"{'bucket':>6} {'length':>7} {'sequences':>11} {'tokens':>14} {'share':>6} {'avg ctx':>8}")
    for bucket, tally in stats["buckets"].items():
        share = tally["tokens"] / stats["tokens"] if stats["tokens"] else 0.0
        click.echo(f"{bucket:>6} {(1 << int(bucket)) + 1:>7} {tally['sequences']:>11,} {tally['tokens']:>14,} "
                   f"{share:>6.1%} {tally['average_context_length']:>8.1f}")
    dropped = stats["dropped_tokens"]
    click.echo(f"{'total':>6} {'':>7} {sum(t['sequences'] for t in stats['buckets'].values()):>11,} "
               f"{stats['tokens']:>14,} {'':>6} {stats['average_context_length']:>8.1f}")
    click.echo(f"dropped {dropped['total']:,} of {stats['document_tokens']:,} document tokens "
               f"({dropped['remainders']:,} in remainders, {dropped['short_documents']:,} in short documents)")
    if "portrait" in stats:
        sketch = stats["portrait"]
        click.echo(f"portrait {sketch['path']}: {sketch['bytes']:,} bytes, {sketch['ngrams']:,} windows of "
                   f"{sketch['text_from']}, design FPR {sketch['design_fpr']:.3g}")
    click.echo(f"written to {output} in {stats['seconds']:.1f} s")


@click.command()
@input_option("directory", "The dataset or export directory to check (a path or an fsspec URL such as s3://).",
              metavar="DIRECTORY", single=True, file_okay=False)
@click.option("--samples", type=click.IntRange(min=0), default=3, show_default=True,
              help="Sequences to decode per bucket (exports).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: kind, ok, problems (and buckets).")
def verify(directory: str, samples: int, as_json: bool) -> None:
    """Check a dataset or an export; exit 1 with one line per problem when damaged.

    A dataset: every data and ledger file against its recorded checksum, Parquet rows and ledger reasons against
    the shard records, record files against the manifest, the manifest's totals, stray shards. An export
    (`gristmill export`): index ↔ data, counts, checksums, token range, lengths; a few sequences decoded.
    """
    location = as_location(directory)
    if not location.exists():
        fail(f"--input {directory}: no such directory")
    if is_dataset_directory(location):
        check = verify_dataset(directory)
        if as_json:
            click.echo(json.dumps(check.as_dict(), indent=2))
        else:
            for problem in check.problems:
                click.echo(f"problem: {problem}")
            for note in check.notes:
                click.echo(f"note: {note}")
            state = "FAILED" if check.problems else "ok"
            click.echo(f"{directory}: {state} ({check.shards} shard(s), {check.rows:,} rows, {len(check.problems)} problem(s))")
        sys.exit(1 if check.problems else 0)
    checks = verify_export(directory, samples)
    if as_json:
        buckets = [{"name": check.name, "ok": not check.problems, "problems": check.problems, "notes": check.notes,
                    "samples": check.samples} for check in checks]
        click.echo(json.dumps({"path": directory, "kind": "export", "ok": not any(check.problems for check in checks),
                               "problems": [f"{check.name}: {problem}" for check in checks for problem in check.problems],
                               "buckets": buckets}, indent=2))
        sys.exit(1 if any(check.problems for check in checks) else 0)
    for check in checks:
        click.echo(f"{check.name}: {'ok' if not check.problems else 'FAILED'}")
        for problem in check.problems:
            click.echo(f"  problem: {problem}")
        for note in check.notes:
            click.echo(f"  note: {note}")
        for sample in check.samples:
            click.echo(f"  {sample}")
    if any(check.problems for check in checks):
        sys.exit(1)


@click.command()
@input_option("mixture_file", "The mixture to compile.", metavar="MIXTURE.yaml", single=True, dir_okay=False)
@click.option("--output", type=click.Path(file_okay=False), required=True, callback=owned_output, help="Directory for plan.json and plan.npy.")
@click.option("--data", "data", cls=PathsOption, type=click.Path(file_okay=False),
              help="Export directories to use instead of the mixture's `data`.")
def mix(mixture_file: str, output: str, data: tuple[str, ...]) -> None:
    """Compile a mixture into a seeded sampling plan with exact token counts per component."""
    from gristmill.pipeline.tokens.mixture import MixtureError, compile_plan, load_mixture, write_plan

    try:
        mixture, base = load_mixture(mixture_file)
        if data:
            mixture, base = mixture.model_copy(update={"data": [str(Path(path).resolve()) for path in data]}), Path.cwd()
        header, plan = compile_plan(mixture, base, Path(mixture_file).name)
    except MixtureError as error:
        fail(str(error))
    path = write_plan(header, plan, output)
    click.echo(f"{'component':<20} {'budget':>14} {'tokens':>14} {'sequences':>10} {'available':>14} {'epochs':>7}")
    for component in header["components"]:
        click.echo(f"{component['name']:<20} {component['budget']:>14,} {component['tokens']:>14,} "
                   f"{component['sequences']:>10,} {component['available_tokens']:>14,} {component['epochs']:>7.2f}")
    click.echo(f"plan: {path} ({header['sequences']:,} sequences, {header['tokens']:,} tokens)")


tokenizer.add_command(evaluate_tokenizers)

commands = [tokenizer, export, verify, mix]
