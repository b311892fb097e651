"""The `gristmill` command: run and plan YAML graphs, run one stage, inspect datasets, make the sample.

Every stage is also a subcommand (`gristmill length-filter --input DS --output DIR ...`) whose
options are generated from its config, so the CLI and YAML always accept the same things.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import click
import pyarrow as pa

from gristmill.pipeline.cli.classifier import commands as classifier_commands
from gristmill.pipeline.cli.portrait import portrait as portrait_group
from gristmill.pipeline.cli.semantic_dedup import semantic_dedup_plan
from gristmill.pipeline.cli.options import PathsOption, cluster_options, fail, fields_as_flags, input_option, open_executor, option_flag, option_location, owned_output
from gristmill.pipeline.cli.tokens import commands as token_commands
from gristmill.pipeline.engine.dataset import Dataset, DatasetError
from gristmill.pipeline.engine.executors import ClusterError
from gristmill.pipeline.engine.files import Location, as_location
from gristmill.pipeline.engine.graph import Graph, GraphError, GraphSpec, NodeSpec, build_graph, load_graph
from gristmill.pipeline.engine.plugins import PLUGINS_VARIABLE, PluginError, import_plugins, plugins_from_environment
from gristmill.pipeline.cli.report import report as run_report_command
from gristmill.pipeline.engine.runner import RunFailed, check_run_directory, default_console, default_dataset_paths, plan_graph, run_graph
from gristmill.pipeline.engine.stage import SourceStage, Stage, registered_stages
from gristmill.pipeline.cli.trainer import commands as trainer_commands
from gristmill.pipeline.cli.ablate import commands as ablate_commands

EXECUTORS = ["inprocess", "local", "dask"]


def executor_options(command):
    """The options every command that runs tasks shares."""
    options = [
        click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
                     help="Where tasks run: this process, a local process pool, or Dask distributed."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Worker processes (default: one per CPU core)."),
        click.option("--scheduler", metavar="ADDRESS", default=None,
                     help="Address of an existing Dask scheduler (implies --executor dask), e.g. tcp://10.0.0.5:8786."),
        click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
                     help="Extra attempts for a shard task that raises before it is reported as failed."),
    ]
    command = cluster_options(command)
    for option in reversed(options):
        command = option(command)
    return command



def execute(graph: Graph, executor: str, workers: int | None, scheduler: str | None, retries: int,
            dataset_paths: dict[str, Location] | None = None) -> None:
    console = default_console()
    try:
        check_run_directory(graph, dataset_paths or default_dataset_paths(graph))  # before a cluster starts
        pool = open_executor(executor, workers, scheduler)
        with pool:
            run_graph(graph, pool, retries, console, dataset_paths)
    except (GraphError, DatasetError, ClusterError) as error:
        fail(str(error))
    except RunFailed as error:
        click.echo(f"error: {error}", err=True)
        where = f"{graph.output}/_failures/" if dataset_paths else f"{graph.output}/<stage>/_failures/"
        click.echo(f"tracebacks: {where}", err=True)
        sys.exit(1)
    except OSError as error:  # a full disk, a permission: the file and errno, and the run resumes once fixed
        where = f"{error.filename}: " if error.filename else ""
        code = f"[Errno {error.errno}] " if error.errno else ""
        click.echo(f"error: {where}{code}{error.strerror or error}", err=True)
        sys.exit(1)
    outputs = dataset_paths or {node.name: graph.output / node.name for node in graph.nodes}
    console.print("outputs:")
    for node in graph.nodes:
        console.print(f"  {node.name:<16} {outputs[node.name]}")


PLUGINS_META_KEY = "gristmill.plugins"  # where the root context keeps the --plugin modules


def plugin_modules(ctx: click.Context) -> tuple[str, ...]:
    """The plugin modules this command names (GRISTMILL_PLUGINS, then each --plugin), imported; one line and
    exit 2 for a module that cannot load."""
    given = ctx.find_root().meta.get(PLUGINS_META_KEY, ())
    modules = tuple(dict.fromkeys([*plugins_from_environment(), *given]))
    try:
        import_plugins(modules)
    except PluginError as error:
        fail(f"--plugin {error}" if error.module in given else f"{PLUGINS_VARIABLE}: {error}")
    return modules


def remember_plugins(ctx: click.Context, param: click.Parameter, modules: tuple[str, ...]) -> None:
    """Eager, so `gristmill --plugin MODULE --help` lists the module's stages."""
    ctx.meta[PLUGINS_META_KEY] = modules
    plugin_modules(ctx)


class StageCommandGroup(click.Group):
    """The fixed commands plus one per registered stage, built when asked for: after the plugin modules load,
    so a plugin's stage is a command like a built-in one."""

    def stage_commands(self, ctx: click.Context) -> dict[str, type[Stage]]:
        plugin_modules(ctx)
        try:
            stages = registered_stages()
        except PluginError as error:
            fail(str(error))
        commands = {stage.name.replace("_", "-"): stage for stage in stages.values()}
        for name in commands.keys() & set(self.commands):
            fail(f"stage {commands[name].name!r} ({commands[name].__module__}) has the name of the command "
                 f"`gristmill {name}`; rename the stage")
        return commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*self.commands, *self.stage_commands(ctx)])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:  # `gristmill run`, `inspect`... import no stage before they need one,
            if plugin_modules(ctx):  # but a plugin's stage may not hide a command
                self.stage_commands(ctx)
            return self.commands[name]
        stage = self.stage_commands(ctx).get(name)
        return stage_command(stage) if stage else None


@click.group(cls=StageCommandGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="gristmill")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", is_eager=True, expose_value=False,
              callback=remember_plugins,
              help=f"Import MODULE first, so the stages it registers are commands and graph stages, and send it with "
                   f"every task to the workers (repeatable; {PLUGINS_VARIABLE}=mod1,mod2 names more). A module is found "
                   "among installed packages, on PYTHONPATH, or else in the current directory.")
def cli() -> None:
    """Gristmill: curate pretraining corpora from Common Crawl to tokenized, mixed shards.

    Run a whole YAML stage graph with `gristmill run CONFIG`, or one stage with
    `gristmill STAGE --input ... --output DIR`. Every output is a dataset directory of
    Parquet shards with a manifest and a reject ledger; `gristmill inspect` shows one.
    Stages of your own join with `--plugin MODULE`.
    """


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="Run directory; each stage writes OUTPUT/<stage-name>/ (default: the config's `output`).")
@executor_options
def run(config: str, output: str | None, executor: str, workers: int | None, scheduler: str | None, retries: int) -> None:
    """Run the stage graph in CONFIG, skipping shards and stages already complete.

    A killed run resumes where it stopped when run again with the same arguments.
    Exits 1 and names the failed shards if any shard still fails after its retries.
    """
    try:
        graph = load_graph(config, output, plugin_modules(click.get_current_context()))
    except GraphError as error:
        fail(str(error))
    execute(graph, executor, workers, scheduler, retries)


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--output", type=click.Path(file_okay=False), default=None, help="Run directory to check against.")
def plan(config: str, output: str | None) -> None:
    """Show what `gristmill run CONFIG` would do and what is already complete."""
    try:
        graph = load_graph(config, output, plugin_modules(click.get_current_context()))
        plans = plan_graph(graph)
    except (GraphError, DatasetError) as error:
        fail(str(error))
    click.echo(f"graph {graph.name} -> {graph.output}")
    for node_plan in plans:
        node = node_plan.node
        reads = ", ".join(node.inputs) if node.inputs else f"{len(node_plan.tasks)} file(s)"
        shards = f"{len(node_plan.done)}/{len(node_plan.tasks)} shards done" if node_plan.tasks else "shards not known yet"
        click.echo(f"  {node.name:<16} {node.stage.name:<16} reads {reads:<24} {shards:<24} {node_plan.state}")


@cli.command()
@input_option("dataset", "The dataset to describe.", metavar="DATASET", single=True, file_okay=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output; keys rows, shards, stage and rejected are stable.")
@click.option("--sample", "sample_rows", type=click.IntRange(min=0), default=3, show_default=True, help="Rows to show.")
@click.option("--where", default=None, metavar="EXPR",
              help="Sample only rows matching `column op literal` (op: == != < <= > >= in), e.g. "
                   "'rewrite_status == \"rewritten\"'.")
@click.option("--columns", default=None, metavar="A,B,...", help="Show only these columns of the sample rows, in full.")
def inspect(dataset: str, as_json: bool, sample_rows: int, where: str | None, columns: str | None) -> None:
    """Print a dataset's schema, size, provenance, sample rows and rejects per reason."""
    from gristmill.classifiers.documents import parse_where

    chosen = [name.strip() for name in columns.split(",") if name.strip()] if columns else None
    try:
        condition = parse_where(where) if where else None
        report = describe_dataset(Dataset(dataset), sample_rows, condition, chosen)
    except (DatasetError, ValueError) as error:
        fail(str(error))
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(f"dataset  {dataset}")
    click.echo(f"stage    {report['stage']}  (config {report['config_hash']})")
    click.echo(f"parents  {', '.join(report['parents']) or '-'}")
    click.echo(f"rows     {report['rows']:,} of {report['rows_in']:,} in, in {report['shards']} shard(s), {report['bytes']:,} bytes")
    click.echo("schema")
    for name, kind in report["schema"].items():
        click.echo(f"  {name}: {kind}")
    click.echo("rejected" + ("  none" if not report["rejected"] else ""))
    for reason, count in report["rejected"].items():
        click.echo(f"  {reason:<24} {count:,}")
    if report["stats"]:
        click.echo("stats")
        for name, value in report["stats"].items():
            click.echo(f"  {name:<24} {value:,}")
    click.echo("sample")
    for row in report["sample"]:
        if chosen:  # asked-for columns in full, one per line, so long texts read as text
            click.echo("  " + "-" * 60)
            for key, value in row.items():
                click.echo(f"  {key}:\n    " + str(value).replace("\n", "\n    "))
            continue
        shown = {key: (value[:120] + "…" if isinstance(value, str) and len(value) > 120 else value) for key, value in row.items()}
        click.echo(f"  {json.dumps(shown, ensure_ascii=False, default=str)}")


def describe_dataset(dataset: Dataset, sample_rows: int, where: Any = None,
                     columns: list[str] | None = None) -> dict[str, Any]:
    manifest = dataset.manifest()
    dataset.check_sizes()  # a stat per file; the shards sampled below are checksummed as they are opened
    if unknown := [name for name in columns or [] if name not in manifest.columns]:
        raise ValueError(f"--columns: {unknown[0]!r} is not a column of {dataset.path} "
                         f"(columns: {', '.join(manifest.columns)})")
    sample: list[dict[str, Any]] = []
    for batch in dataset.iter_batches():
        table = pa.Table.from_batches([batch])
        table = table.filter(where.mask(table)) if where else table
        table = table.select(columns) if columns else table
        sample.extend(table.slice(0, sample_rows - len(sample)).to_pylist())
        if len(sample) >= sample_rows:
            break
    return {
        "path": str(dataset.path),
        "stage": manifest.stage,
        "config_hash": manifest.config_hash,
        "config": manifest.config,
        "parents": manifest.parents,
        "rows": manifest.rows,
        "rows_in": manifest.rows_in,
        "shards": len(manifest.shards),
        "bytes": manifest.bytes,
        "schema": manifest.columns,
        "rejected": manifest.rejected,
        "stats": manifest.stats,
        "sample": sample,
    }


@cli.command("dedup-plan")
@input_option("dataset", "The dataset to be deduplicated.", metavar="DATASET", single=True, file_okay=False)
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Target Jaccard similarity of near duplicates.")
@click.option("--num-perm", type=click.IntRange(min=2), default=128, show_default=True, help="MinHash permutations.")
@click.option("--false-positive-weight", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Weight of false positives when choosing bands x rows.")
@click.option("--false-negative-weight", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="Weight of false negatives when choosing bands x rows.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Whether candidates will be checked against exact Jaccard (changes storage and memory).")
def dedup_plan(dataset: str, threshold: float, num_perm: int, false_positive_weight: float,
               false_negative_weight: float, verify: bool) -> None:
    """Before deduplicating DATASET: bands and rows, the S-curve, storage and memory per worker."""
    from gristmill.stages.dedup.lsh import format_dedup_plan

    try:
        click.echo(format_dedup_plan(dataset, threshold, num_perm, false_positive_weight, false_negative_weight, verify))
    except DatasetError as error:
        fail(str(error))


@cli.command()
@click.option("--output", type=click.Path(file_okay=False), required=True, callback=owned_output,
              help="Directory for sample.warc.gz and pages.jsonl.")
@click.option("--pages", type=click.IntRange(min=10), default=400, show_default=True, help="Number of pages.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
def sample(output: str, pages: int, seed: int) -> None:
    """Write the bundled Common-Crawl-like sample: HTML pages in WARC plus their text as JSONL."""
    from gristmill.pipeline.demo.sample import write_sample

    summary = write_sample(Path(output), pages=pages, seed=seed)
    click.echo(f"sample: {summary.warc_path} ({summary.records} WARC records), {summary.jsonl_path} ({summary.pages} pages)")


def _unwrap_optional(annotation: Any) -> Any:
    """The plain type behind `X | None` and `Annotated[X, ...]`, for choosing a CLI option's kind."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _unwrap_optional(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _unwrap_optional(members[0]) if len(members) == 1 else annotation
    return annotation


def in_command_line_terms(message: str, stage: type[Stage]) -> str:
    """A graph error as the user of `gristmill STAGE` typed it: `stages.S.params.min_words` is `--min-words`,
    `stages.S.params.benchmarks.0.fields` is `--benchmarks (value 1, fields)`, field names in the text are flags."""
    where, found, rest = message.partition(f"stages.{stage.name}.")
    if not found:
        return message
    location, _, explanation = rest.partition(": ")
    section, *path = location.split(".")
    if section == "input" or (path[:1] == ["paths"] and issubclass(stage, SourceStage)):
        where += "--input: "
    elif section == "params" and path:
        where += option_location(path) + ": "
    return where + fields_as_flags(explanation, list(stage.Config.model_fields))


class JsonObject(click.ParamType):
    """An option holding nested config: a JSON object (`{"kind": "vllm", "tensor_parallel_size": 2}`) is parsed,
    anything else (a kind's name alone) goes to the config as it is."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str) or not value.lstrip().startswith("{"):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            self.fail(f"not a JSON object: {error}", param, ctx)


JSON_OBJECT = JsonObject()


def stage_command(stage: type[Stage]) -> click.Command:
    """A subcommand for one stage, with an option per config field."""
    is_source = issubclass(stage, SourceStage)
    fields = {name: info for name, info in stage.Config.model_fields.items() if not (is_source and name == "paths")}

    def callback(inputs: tuple[str, ...], output: str, executor: str, workers: int | None, scheduler: str | None,
                 retries: int, **options: Any) -> None:
        params = {name: value for name, value in options.items() if value is not None and value != ()}
        params = {name: list(value) if isinstance(value, tuple) else value for name, value in params.items()}
        node = NodeSpec(stage=stage.name, params=params | ({"paths": list(inputs)} if is_source and inputs else {}),
                        input=None if is_source else list(inputs))
        spec = GraphSpec(name=stage.name, plugins=list(plugin_modules(click.get_current_context())),
                         stages={stage.name: node})
        try:
            graph = build_graph(spec, f"gristmill {command_name}", as_location(output))
        except GraphError as error:
            fail(in_command_line_terms(str(error), stage))
        execute(graph, executor, workers, scheduler, retries, dataset_paths={stage.name: as_location(output)})

    command_name = stage.name.replace("_", "-")
    params: list[click.Parameter] = [
        PathsOption(["--input", "inputs"], required=not is_source,
                    help="Input files or globs (the config's `paths`)." if is_source else "Input dataset directories."),
        click.Option(["--output"], required=True, type=click.Path(file_okay=False), help="Output dataset directory."),
    ]
    for name, info in fields.items():
        annotation = _unwrap_optional(info.annotation)
        flag = option_flag(name)
        help_text = (info.description or "") + ("" if info.is_required() else f" [default: {info.default}]")
        if info.discriminator:  # one of several option models, told apart by their kind
            default = "" if info.is_required() else f" [default: {json.dumps({info.discriminator: getattr(info.default, info.discriminator)})}]"
            params.append(click.Option([flag, name], type=JSON_OBJECT, default=None, metavar="JSON",
                                       help=f"{info.description} As a JSON object, or the {info.discriminator} alone.{default}",
                                       required=info.is_required()))
        elif annotation is bool:
            params.append(click.Option([f"{flag}/--no-{flag[2:]}", name], default=None, help=help_text))
        elif typing.get_origin(annotation) is list:
            params.append(click.Option([flag, name], multiple=True, help=help_text + " (repeatable)"))
        elif typing.get_origin(annotation) is typing.Literal:
            choices = [str(choice) for choice in typing.get_args(annotation)]
            params.append(click.Option([flag, name], type=click.Choice(choices), default=None, help=help_text,
                                       required=info.is_required()))
        else:
            metavar = getattr(annotation, "__name__", "VALUE").upper()
            params.append(click.Option([flag, name], default=None, help=help_text, metavar=metavar,
                                       required=info.is_required()))
    doc = (stage.__doc__ or stage.name).strip()
    command = click.Command(command_name, callback=callback, params=params, help=doc, short_help=doc.splitlines()[0])
    return executor_options(command)


for _command in [*token_commands, *trainer_commands, *ablate_commands, *classifier_commands, run_report_command,
                 portrait_group, semantic_dedup_plan]:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="gristmill")

