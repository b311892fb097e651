"""`gristmill portrait build|query|merge`: Bloom-filter sketches of a dataset's text, to ship beside it.

The work is library code (stages/dedup/portrait.py); these commands parse options, call it and print.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pyarrow as pa

from gristmill.pipeline.cli.options import fail, input_option
from gristmill.pipeline.engine.dataset import DatasetError, is_dataset_directory
from gristmill.pipeline.engine.files import as_location
from gristmill.stages.dedup.decontaminate import read_items
from gristmill.stages.dedup.portrait import (
    DEFAULT_FPR,
    MAGIC,
    PortraitError,
    TextSource,
    build_portrait,
    dataset_source,
    read_portrait,
)


SHOWN_SPAN = 160  # characters of the longest span printed (--json gives all of it)


def writable_sketch_path(path: str) -> str:
    """A sketch goes to a new file or replaces an older sketch, never another kind of file."""
    location = as_location(path)
    if location.is_dir():
        fail(f"--output {path}: a directory; give the sketch file's name, e.g. {Path(path) / 'data.bloom'}")
    if location.exists():
        with location.open("rb") as handle:
            if handle.read(len(MAGIC)) != MAGIC:
                fail(f"--output {path}: exists and is not a sketch; choose a new file")
    location.parent.mkdir(parents=True, exist_ok=True)
    return path


def sketch_output(context: click.Context, parameter: click.Parameter, value: Any) -> Any:
    return writable_sketch_path(value) if value is not None else value


def text_source(path: str, column: str, fields: tuple[str, ...]) -> TextSource:
    """A dataset's `column`, or the items of a JSONL/Parquet file (a benchmark) with `fields` joined."""
    if is_dataset_directory(as_location(path)):
        return dataset_source(path, column)
    try:
        texts, _ = read_items(path, list(fields))
    except FileNotFoundError:
        fail(f"--input {path}: no such dataset or file")
    except ValueError as error:
        fail(str(error))
    return TextSource(as_location(path).name, lambda: iter([pa.array(texts, pa.large_string())]))


def print_summary(path: str, summary: dict[str, Any]) -> None:
    share = summary["bytes"] / summary["characters"] if summary["characters"] else 0.0
    click.echo(f"sketch     {path}")
    click.echo(f"texts      {summary['texts']:,} ({summary['characters']:,} normalised characters)")
    click.echo(f"n-grams    {summary['ngrams']:,} windows of 50 characters (sized for {summary['capacity']:,})")
    click.echo(f"size       {summary['bytes']:,} bytes ({share:.2%} of the text), {summary['hashes']} hashes")
    click.echo(f"FPR        design {summary['design_fpr']:.3g} (target {summary['target_fpr']:.3g}), "
               f"at the fill reached {summary['fill_fpr']:.3g}")


@click.group()
def portrait() -> None:
    """Data portraits: a Bloom filter over a dataset's 50-character windows that answers "was this text in the
    data?" in microseconds (Marone & Van Durme 2023). See docs/PORTRAITS.md."""


@portrait.command("build")
@input_option("inputs", "Datasets (paths or fsspec URLs) or JSONL/Parquet item files whose texts are sketched.",
              metavar="DATASET")
@click.option("--output", required=True, type=click.Path(dir_okay=False), callback=sketch_output,
              help="The sketch file to write, e.g. data.bloom.")
@click.option("--fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=DEFAULT_FPR,
              show_default=True, help="Target false-positive rate of one window, at the capacity.")
@click.option("--capacity", type=click.IntRange(min=1), default=None,
              help="Windows to size the filter for (default: counted in a first pass). Sketches built to be merged "
                   "take the same capacity: their sources' total.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the hash functions.")
@click.option("--column", default="text", show_default=True, help="The datasets' text column.")
@click.option("--field", "fields", multiple=True, default=("text",), show_default=True,
              help="Item files: fields joined into an item's text (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the sketch's header as JSON.")
def build(inputs: tuple[str, ...], output: str, fpr: float, capacity: int | None, seed: int, column: str,
          fields: tuple[str, ...], as_json: bool) -> None:
    """Build a sketch of the inputs' texts: normalised, cut into 50-character windows, hashed into a Bloom filter
    sized for --fpr."""
    try:
        sketch = build_portrait([text_source(path, column, fields) for path in inputs], fpr, capacity, seed)
        header = sketch.write(output)
    except (PortraitError, DatasetError) as error:
        fail(str(error))
    except OSError as error:
        fail(f"{getattr(error, 'filename', '') or output}: {error.strerror or error}")
    if as_json:
        click.echo(json.dumps(header | {"path": output}, indent=2, sort_keys=True))
    else:
        print_summary(output, sketch.summary())


@portrait.command("query")
@input_option("sketch_path", "The sketch to ask.", metavar="SKETCH", single=True, dir_okay=False)
@click.option("--text", "text_file", type=click.File("r", encoding="utf-8"), required=True,
              help="A file holding the text, or - for standard input.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable answer.")
def query(sketch_path: str, text_file: Any, as_json: bool) -> None:
    """How much of a text the sketched data holds: its windows found (at any alignment) and the longest span."""
    try:
        answer = read_portrait(sketch_path).match_text(text_file.read())
    except PortraitError as error:
        fail(str(error))
    if as_json:
        click.echo(json.dumps({"sketch": sketch_path} | answer, indent=2))
        return
    span = answer["longest_span"]
    click.echo(f"found {answer['found']:,} of {answer['windows']:,} windows ({answer['share']:.1%}); "
               f"{answer['hits']:,} hits, {answer['expected_chance_hits']:.2g} expected by chance")
    if span["characters"]:
        shown = span["text"] if len(span["text"]) <= SHOWN_SPAN else span["text"][:SHOWN_SPAN] + "…"
        click.echo(f"longest matched span: {span['characters']:,} characters from {span['start']:,}: {shown!r}")
    else:
        click.echo("longest matched span: none")


@portrait.command("merge")
@input_option("sketch_paths", "Sketches built alike (same --capacity, --fpr and --seed), e.g. one per source.",
              metavar="SKETCH", dir_okay=False)
@click.option("--output", required=True, type=click.Path(dir_okay=False), callback=sketch_output,
              help="The merged sketch file.")
def merge(sketch_paths: tuple[str, ...], output: str) -> None:
    """Merge sketches by bitwise OR: the same bytes as one build over all their sources."""
    if len(sketch_paths) < 2:
        fail(f"--input: merge takes two sketches or more, got {len(sketch_paths)}")
    try:
        merged = read_portrait(sketch_paths[0])
        for path in sketch_paths[1:]:
            merged = merged.merge(read_portrait(path), path)
        merged.write(output)
    except PortraitError as error:
        fail(str(error))
    except OSError as error:
        fail(f"{getattr(error, 'filename', '') or output}: {error.strerror or error}")
    print_summary(output, merged.summary())


commands = [portrait]
