"""`gristmill semantic-dedup-plan`: before running `semantic_dedup`, the share of documents each cosine threshold
would remove, measured on whole k-means clusters chosen at random (stages/dedup/semantic_dedup.py)."""

from __future__ import annotations

import json

import click

from gristmill.pipeline.cli.options import fail, input_option
from gristmill.pipeline.engine.dataset import DatasetError


def parse_thresholds(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    try:
        thresholds = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected numbers separated by commas, e.g. 0.95,0.9,0.85") from None
    if not thresholds or any(not 0 < threshold <= 1 for threshold in thresholds):
        raise click.BadParameter(f"{value!r}: each threshold must be in (0, 1]")
    return thresholds


@click.command("semantic-dedup-plan")
@input_option("dataset", "The embedded dataset to be deduplicated.", metavar="DATASET", single=True, file_okay=False)
@click.option("--thresholds", default="0.95,0.9,0.85", show_default=True, callback=parse_thresholds,
              help="Cosine thresholds to compare, separated by commas.")
@click.option("--sample", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Documents to deduplicate: whole k-means clusters, chosen at random until they hold about this many.")
@click.option("--clusters", type=click.IntRange(min=1), default=None,
              help="k of k-means, as the stage's `clusters` (default: one per 10,000 embedded documents).")
@click.option("--sample-size", type=click.IntRange(min=1), default=None,
              help="Documents to train the centroids on, as the stage's `sample_size`.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="As the stage's `seed`.")
@click.option("--embedding-column", default="embedding", show_default=True, help="The column of embeddings.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def semantic_dedup_plan(dataset: str, thresholds: list[float], sample: int, clusters: int | None,
                        sample_size: int | None, seed: int, embedding_column: str, as_json: bool) -> None:
    """Before semantic dedup of DATASET: the share removed at each threshold, on a sample of whole clusters."""
    from gristmill.stages.dedup.semantic_dedup import SemanticDedupConfig, format_preview, preview_semantic_dedup

    config = SemanticDedupConfig(clusters=clusters, sample_size=sample_size, seed=seed,
                                 embedding_column=embedding_column)
    try:
        preview = preview_semantic_dedup(dataset, thresholds, sample, config)
    except (DatasetError, ValueError) as error:
        fail(str(error))
    click.echo(json.dumps(preview.as_dict(), indent=2) if as_json else format_preview(preview))
