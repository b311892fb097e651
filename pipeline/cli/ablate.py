"""`gristmill ablate CONFIG --output DIR`: a recipe's variants trained at equal compute and compared."""

from __future__ import annotations

import click

from gristmill.pipeline.cli.options import fail, open_executor, owned_output


@click.command("ablate", short_help="Prove a recipe with proxy runs: variants at equal compute, with intervals.")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--output", type=click.Path(file_okay=False), required=True, callback=owned_output,
              help="Ablation directory: the variants' data and runs, ablation.json and report/.")
@click.option("--recipe-output", type=click.Path(file_okay=False), default=None,
              help="Where the recipe runs, overriding the config's recipe.output (complete nodes are reused).")
@click.option("--executor", type=click.Choice(["inprocess", "local", "dask"]), default="inprocess", show_default=True,
              help="Where graphs and proxy runs run: here, a local process pool, or Dask distributed.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes for local or Dask.")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="An existing Dask scheduler (implies --executor dask); GPU workers: --resources GPU=1.")
def ablate(config: str, output: str, recipe_output: str | None, executor: str, workers: int | None, scheduler: str | None) -> None:
    """Run the recipe in CONFIG, hold out a slice of its final output, and train the same small model at equal
    tokens and seeds on each variant (raw, after each stage, without a stage, quality thresholds, batching).
    Writes ablation.json and a report with bits per byte, intervals over seeds and plain-language findings.

    Rerun the same command to resume: complete datasets, exports and runs are reused.
    """
    from pathlib import Path

    from gristmill.pipeline.engine.dataset import DatasetError
    from gristmill.pipeline.reports.ablation_report import write_ablation_report
    from gristmill.trainer.ablation import run_ablation, summary_lines
    from gristmill.trainer.ablation_config import AblationError, load_ablation

    try:
        settings, recipe = load_ablation(config, Path(output).resolve(), recipe_output)
        with open_executor(executor, workers, scheduler) as pool:
            summary = run_ablation(settings, recipe, output, pool, click.echo)
        paths = write_ablation_report(summary, Path(output) / "report")
    except (AblationError, DatasetError, ValueError) as error:
        fail(str(error))
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        fail(f"{where}{error.strerror or error}")
    for line in summary_lines(summary):
        click.echo(line)
    click.echo(f"results     {Path(output) / 'ablation.json'}")
    click.echo(f"report      {paths['html']}")


commands = [ablate]
