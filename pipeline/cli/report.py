"""`gristmill report`: write the run report of a run directory or one dataset (pipeline/reports/run_report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gristmill.pipeline.cli.options import fail, input_option, owned_output
from gristmill.pipeline.engine.dataset import DatasetError
from gristmill.pipeline.reports.run_report import ReportError, write_run_report


@click.command("report")
@input_option("run_or_dataset", "A run directory or one dataset (a path or an fsspec URL such as s3://).",
              metavar="RUN_OR_DATASET", single=True)
@click.option("--output", required=True, callback=owned_output, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for report.html, report.md, figures/ and report.json.")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Rows in the language, source and domain tables.")
def report(run_or_dataset: str, output: Path, top: int) -> None:
    """Write the run report (funnel, distributions, sources, timings) of a run directory or one dataset."""
    try:
        paths = write_run_report(run_or_dataset, output, top)
    except (ReportError, DatasetError) as error:
        fail(str(error))
    problems = json.loads(paths["json"].read_text())["problems"]
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"report: {paths['html']}")
    click.echo(f"        {paths['markdown']}")
    click.echo(f"        {paths['json']}")
