"""How commands spell their options: what they read is `--input PATH [PATH ...]` (several paths after one flag, or
the flag repeated; old spellings still accepted for a release, with a note), and errors name flags, not config paths."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, get_args

import click
import yaml

from gristmill.pipeline.engine.dataset import DatasetError
from gristmill.pipeline.engine.executors import ClusterError, ClusterKind, ClusterRequest, make_executor
from gristmill.pipeline.engine.files import as_location
from gristmill.pipeline.engine.ownership import claim, release_if_unused


def fail(message: str) -> NoReturn:
    """A usage or input problem: one line on stderr, exit 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def claim_output(path: str | Path) -> None:
    """The output directory must be absent, empty or Gristmill's own; it is then marked as Gristmill's. Called
    before a command does any work."""
    try:
        claim(as_location(path))
    except DatasetError as error:
        fail(str(error))


def owned_output(context: click.Context, parameter: click.Parameter, value: Any) -> Any:
    """Callback of `--output` options: `claim_output` as the option is parsed (so a killed command resumes into a
    directory already marked); a directory it made and the command left empty is removed as the command ends."""
    if value is not None:
        made = not as_location(value).exists()
        claim_output(value)
        if made:
            context.call_on_close(lambda: release_if_unused(as_location(value)))
    return value


class PathsOption(click.Option):
    """An option that takes every argument up to the next option (`--input A B`), and may be repeated.

    Click gives an option a fixed number of values, so this one takes the following arguments as it is parsed.
    A path that starts with `-` is given as `--input=-odd-name`.
    """

    def __init__(self, *args: Any, single: bool = False, needed: bool = False, **kwargs: Any) -> None:
        """`single`: one path is meant (shown so in help); `needed`: shown as required in help, checked by the
        command, which may also have it from an old spelling."""
        kwargs["multiple"] = True
        kwargs.setdefault("metavar", "PATH")
        super().__init__(*args, **kwargs)
        self.metavar = self.metavar if single else f"{self.metavar} [{self.metavar} ...]"
        self.needed = needed

    def get_help_extra(self, ctx: click.Context) -> Any:
        return super().get_help_extra(ctx) | ({"required": "required"} if self.needed else {})

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for flag in self.opts:
            parsed = parser._long_opt.get(flag) or parser._short_opt.get(flag)
            parsed.process = _taking_following_values(parsed.process)


def _taking_following_values(process: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def take(value: Any, state: Any) -> None:
        process(value, state)
        while state.rargs and not state.rargs[0].startswith("-"):
            process(state.rargs.pop(0), state)
    return take


class DeprecatedArgument(click.Argument):
    """An old positional spelling: still accepted, but left out of the usage line."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []


def input_option(name: str, description: str, *, metavar: str = "PATH", single: bool = False, required: bool = True,
                 deprecated_option: str | None = None, **path_type: Any) -> Callable:
    """`--input`, passed to the command as `name`: one value when `single`, else a tuple of paths.

    The old positional spelling (`metavar`) and `deprecated_option` are accepted too, with a note on stderr.
    `path_type` goes to `click.Path` (file_okay, dir_okay, exists).
    """
    shown = f"--input {metavar}"
    many = "" if single else " Several after one --input, or --input repeated."

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def with_inputs(**values: Any) -> Any:
            paths = values.pop(name)
            context = click.get_current_context()
            option = next(param for param in context.command.params if param.name == name)
            for spelling, legacy in [(f"the positional {metavar}", values.pop("deprecated_argument")),
                                     (deprecated_option, values.pop("deprecated_option", ()))]:
                if legacy:
                    click.echo(f"note: {spelling} is deprecated; use {shown}", err=True)
                    paths += tuple(option.type.convert(value, option, context) for value in legacy)
            if required and not paths:
                raise click.MissingParameter(ctx=context, param=option)
            if single and len(paths) > 1:
                raise click.BadParameter(f"takes one {metavar}, got {len(paths)}: {' '.join(map(str, paths))}",
                                         context, option)
            values[name] = (paths[0] if paths else None) if single else paths
            return command(**values)

        path = click.Path(**path_type)
        with_inputs = click.option("--input", name, cls=PathsOption, type=path, metavar=metavar, single=single,
                                   needed=required, help=description + many)(with_inputs)
        # The old spellings are checked as --input once merged, so a problem names --input whichever was used.
        with_inputs = click.argument("deprecated_argument", cls=DeprecatedArgument, nargs=-1)(with_inputs)
        if deprecated_option:
            with_inputs = click.option(deprecated_option, "deprecated_option", multiple=True, hidden=True)(with_inputs)
        return with_inputs

    return decorate


def option_flag(field: str) -> str:
    """The flag of a config field: `min_words` is `--min-words`."""
    return "--" + field.replace("_", "-")


def option_location(location: Sequence[str | int]) -> str:
    """A pydantic error location as typed on the command line: (`benchmarks`, 0, `fields`) is
    `--benchmarks (value 1, fields)`; keys inside a value keep their spelling there."""
    field, *inside = [str(part) for part in location]
    within = ", ".join(f"value {int(part) + 1}" if part.isdigit() else part for part in inside)
    return option_flag(field) + (f" ({within})" if within else "")


UNDERSCORED_NAME = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")


def fields_as_flags(text: str, fields: Sequence[str]) -> str:
    """Config field names in an explanation as flags ("max_chars must be at least min_chars"); only names with an
    underscore are touched, so ordinary words that happen to be field names stay words."""
    return UNDERSCORED_NAME.sub(lambda name: option_flag(name[0]) if name[0] in fields else name[0], text)


CLUSTER_META_KEY = "gristmill.cluster"  # where a command's context keeps its --cluster options


def cluster_options(command: Callable) -> Callable:
    """`--cluster slurm`, `--cluster-jobs N` and `--cluster-option KEY=VALUE`: Dask workers started as batch jobs.
    Their values wait in the context, as `--plugin`'s do, for `open_executor`; commands take no new parameters."""

    def remember(context: click.Context, parameter: click.Parameter, value: Any) -> None:
        context.meta.setdefault(CLUSTER_META_KEY, {})[parameter.name] = value

    options = [
        click.option("--cluster", type=click.Choice(get_args(ClusterKind)), default=None, expose_value=False,
                     callback=remember,
                     help="Start the Dask workers as jobs of this batch scheduler, through dask-jobqueue "
                          "(implies --executor dask; pip install 'gristmill[slurm]')."),
        click.option("--cluster-jobs", type=click.IntRange(min=1), default=None, expose_value=False,
                     callback=remember,
                     help="Batch jobs to start (default 1), each with the workers its options give."),
        click.option("--cluster-option", multiple=True, metavar="KEY=VALUE", expose_value=False, callback=remember,
                     help="A keyword argument of dask-jobqueue's cluster, e.g. cores=8, memory=32GB, "
                          "walltime=04:00:00, queue=cpu, log_directory=logs (repeatable; VALUE is YAML)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def cluster_option(text: str) -> tuple[str, Any]:
    """`KEY=VALUE`, the value read as YAML (`cores=8` is a number, `job_extra_directives=[--exclusive]` a list),
    except that a time stays text: YAML 1.1 reads `04:00:00` as a base-60 number."""
    key, separator, raw = text.partition("=")
    if not separator or not key.strip():
        fail(f"--cluster-option {text}: expected KEY=VALUE, e.g. memory=32GB")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (int, float)) and ":" in raw:
        value = raw
    return key.strip(), value


def requested_cluster() -> ClusterRequest | None:
    """The running command's --cluster options; None without --cluster."""
    context = click.get_current_context(silent=True)
    given = context.meta.get(CLUSTER_META_KEY, {}) if context else {}
    kind = given.get("cluster")
    if kind is None:
        for flag in ("cluster_jobs", "cluster_option"):
            if given.get(flag):
                fail(f"{option_flag(flag)} needs --cluster slurm")
        return None
    return ClusterRequest(kind, given.get("cluster_jobs") or 1, dict(map(cluster_option, given["cluster_option"])))


def open_executor(executor: str, workers: int | None, scheduler: str | None):
    """The executor, or one line saying why a scheduler could not be reached or a batch cluster not started."""
    cluster = requested_cluster()
    if cluster and scheduler:
        fail("--cluster starts its own Dask scheduler; leave out --scheduler")
    if cluster and workers:
        fail("--workers: with --cluster, --cluster-jobs and the cores and processes options size the cluster")
    try:
        return make_executor(executor, workers, scheduler, cluster)
    except ClusterError as error:
        fail(f"--cluster-option {error.option}: {error}" if error.option else f"--cluster {cluster.kind}: {error}")
    except (OSError, TimeoutError, ValueError) as error:
        if scheduler:
            fail(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({type(error).__name__}: "
                 f"{str(error).splitlines()[0] if str(error) else 'no answer'})")
        raise
