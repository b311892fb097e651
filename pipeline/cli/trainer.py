"""`gristmill train` and `gristmill proxy`, with options generated from their pydantic configs.

Under `torchrun --nproc-per-node N -m gristmill.pipeline train ...` each process trains its share of every step (DDP).
"""

from __future__ import annotations

import os
import types
import typing
from typing import Any

import click
from pydantic import BaseModel, ValidationError

from gristmill.pipeline.cli.options import PathsOption, claim_output, fail, fields_as_flags, input_option, option_flag, option_location, owned_output
from gristmill.trainer.config import TrainConfig
from gristmill.trainer.protocol import PER_RUN, ProxyError, ProxyRun
from gristmill.trainer.proxy import ProxyConfig, run_proxy


def field_option(name: str, info: Any, flag: str | None = None) -> click.Option:
    """A click option for one config field; dict fields take NAME=VALUE and lists repeat."""
    annotation = info.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    flag = flag or option_flag(name)
    required = info.is_required()
    default = None if required else info.get_default(call_default_factory=True)
    help_text = (info.description or "") + ("" if default in (None, [], {}) else f" [default: {default}]")
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return click.Option([f"{flag}/--no-{flag[2:]}", name], default=None, help=help_text)
    if origin is dict:
        return click.Option([flag, name], multiple=True, required=required, metavar="NAME=PATH",
                            help=help_text + " (repeatable)")
    if origin is list:
        item = typing.get_args(annotation)[0]
        if item is str:
            return PathsOption([flag, name], required=required, help=help_text)
        return click.Option([flag, name], type=item, multiple=True, required=required,
                            metavar=item.__name__.upper(), help=help_text + " (repeatable)")
    if origin is typing.Literal:
        return click.Option([flag, name], type=click.Choice(typing.get_args(annotation)), default=None,
                            required=required, help=help_text)
    metavar = "TEXT" if annotation is str else annotation.__name__.upper()
    return click.Option([flag, name], type=annotation, default=None, required=required, help=help_text, metavar=metavar)


def named_paths(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, separator, path = value.partition("=")
        if not separator or not name or not path:
            fail(f"{option} takes NAME=PATH, got {value!r}")
        pairs[name] = path
    return pairs


def given(options: dict[str, Any]) -> dict[str, Any]:
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in options.items() if value is not None and value != ()}


def build(config_type: type[BaseModel], /, **values: Any) -> Any:
    """The config from command-line values, or one line naming the option; positional-only, so a field may be
    called anything (`--model` once collided with this parameter)."""
    try:
        return config_type(**values)
    except ValidationError as error:
        first = error.errors()[0]
        location = option_location(first["loc"]) if first["loc"] else "options"
        fail(f"{location}: {fields_as_flags(first['msg'], list(config_type.model_fields))}")


def report_step(steps: int, every: int):
    def on_step(record: dict) -> None:
        if record["step"] % every == 0 or record["step"] == steps:
            click.echo(f"step {record['step']:>6}/{steps}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                       f"{record['rows']}×{record['seq_len']}  {record['step_tokens'] / record['seconds']:,.0f} tok/s")
    return on_step


def print_summary(metrics: dict) -> None:
    throughput = metrics["throughput"]
    if throughput:
        mfu = f"{throughput['mfu']:.1%}" if throughput["mfu"] is not None else "n/a (no peak FLOP/s for this device)"
        click.echo(f"throughput  {throughput['tokens_per_second']:,.0f} tokens/s, "
                   f"{throughput['achieved_flops_per_device'] / 1e12:.3f} TFLOP/s per device, MFU {mfu}")
    click.echo(f"peak memory {metrics['peak_memory_bytes'] / 2**30:.2f} GiB ({metrics['peak_memory_kind']})")
    for name, value in metrics["final_bits_per_byte"].items():
        click.echo(f"held-out    {name}: {value:.4f} bits/byte")


def train_command() -> click.Command:
    fields = TrainConfig.model_fields

    def callback(**options: Any) -> None:
        values = given(options)
        values["heldout"] = named_paths(options["heldout"], "--heldout")
        config = build(TrainConfig, **values)
        claim_output(config.output)
        try:
            from gristmill.trainer.train import train  # torch loads only when training

            metrics = train(config, report_step(config.steps, config.log_every))
        except (ValueError, OSError) as error:
            fail(str(error))
        if int(os.environ.get("RANK", "0")) == 0:
            print_summary(metrics)
            click.echo(f"outputs     {config.output}/metrics.json, loss.png, checkpoint.pt")

    return click.Command("train", callback=callback, params=[field_option(name, info) for name, info in fields.items()],
                         help="Train the bundled GPT on exported token buckets or a mixture plan.\n\n"
                              "Rerun with the same options to resume from OUTPUT/checkpoint.pt.",
                         short_help="Train the bundled GPT on exported token buckets or a mixture plan.")


def proxy_command() -> click.Command:
    proxy_fields = ProxyConfig.model_fields
    params = [
        click.Option(["--candidate", "candidates"], multiple=True, required=True, metavar="NAME=PATH[,PATH...]",
                     help=proxy_fields["candidates"].description + " (repeatable, at least two)"),
        field_option("heldout", proxy_fields["heldout"]),
        field_option("tokens", proxy_fields["tokens"]),
        field_option("seeds", proxy_fields["seeds"], "--seed"),
        field_option("output", proxy_fields["output"]),
        *[field_option(name, info) for name, info in TrainConfig.model_fields.items() if name not in PER_RUN],
    ]

    def callback(candidates: tuple[str, ...], heldout: tuple[str, ...], tokens: int | None, seeds: tuple[int, ...],
                 output: str | None, **training: Any) -> None:
        config = build(ProxyConfig, output=output, tokens=tokens, heldout=named_paths(heldout, "--heldout"),
                       candidates={name: paths.split(",") for name, paths in named_paths(candidates, "--candidate").items()},
                       training=given(training), **({"seeds": list(seeds)} if seeds else {}))
        claim_output(config.output)

        def on_run(run: ProxyRun, result: dict) -> None:
            scores = ", ".join(f"{held}: {value:.4f}" for held, value in result["bits_per_byte"].items())
            reused = "  (reused)" if result["reused"] else ""
            click.echo(f"{run.candidate:<16} seed {run.seed:<4} loss {result['final_loss']:.4f}  bits/byte {scores}{reused}")

        try:
            report = run_proxy(config, on_run)  # torch loads only in the runs
        except (ProxyError, ValueError, OSError) as error:
            fail(str(error))
        click.echo(f"{'candidate':<16} {'mean bits/byte':>14} {'spread':>8}")
        for name in report["ranking"]:
            candidate = report["candidates"][name]
            click.echo(f"{name:<16} {candidate['mean_bits_per_byte']:>14.4f} {candidate['mean_spread']:>8.4f}")
        separated = "separated on every seed" if report["separated_across_seeds"] else "not separated on every seed"
        low, high = report["margin_interval"]
        click.echo(f"winner: {report['winner']} by {report['margin_bits_per_byte']:.4f} bits/byte "
                   f"(95% interval over seeds {low:.4f} to {high:.4f}; {separated})")

    return click.Command("proxy", callback=callback, params=params,
                         help="Train the same small model on each candidate dataset or mixture, with equal token "
                              "budgets and fixed seeds, and rank them by held-out bits per byte.",
                         short_help="Rank candidate datasets or mixtures by proxy-model bits per byte.")


commands = [train_command(), proxy_command()]


def build_sweep_command() -> click.Command:
    @click.command("sweep", short_help="Sample mixtures, train a proxy run on each, predict the best mixture.")
    @input_option("config_path", "The sweep config (YAML).", metavar="CONFIG", single=True, dir_okay=False)
    @click.option("--output", type=click.Path(file_okay=False), required=True, callback=owned_output,
                  help="Sweep directory: one run per mixture, sweep.json and report/.")
    @click.option("--executor", type=click.Choice(["inprocess", "local", "dask"]), default="inprocess",
                  show_default=True, help="Where runs train: one after another here, a local process pool, or Dask.")
    @click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes for local or Dask.")
    @click.option("--scheduler", metavar="ADDRESS", default=None,
                  help="An existing Dask scheduler (implies --executor dask); GPU workers: --resources GPU=1.")
    def sweep(config_path: str, output: str, executor: str, workers: int | None, scheduler: str | None) -> None:
        """Sample mixtures around the natural token prior (RegMix), train a proxy run on each, fit predictors of
        bits per byte, and write a report with the predicted optimum.

        Rerun the same command to resume: finished runs are reused.
        """
        from gristmill.pipeline.engine.executors import make_executor
        from gristmill.pipeline.tokens.mixture import MixtureError
        from gristmill.trainer.sweep import SweepError, load_sweep, predict_sweep, run_sweep
        from gristmill.trainer.sweep_report import write_sweep_report

        def on_run(result: dict) -> None:
            scores = ", ".join(f"{name}: {value:.4f}" for name, value in result["bits_per_byte"].items())
            status = "reused" if result["reused"] else f"{result['seconds']:.1f} s"
            click.echo(f"{result['name']}  {status:>8}  bits/byte {scores}")

        try:
            config = load_sweep(config_path)
            if config.gpus_per_run and executor == "dask" and not scheduler:
                fail("gpus_per_run needs --scheduler: a local Dask cluster declares no GPU resources, so no worker "
                     "would take a run")
            with make_executor(executor, workers, scheduler) as pool:
                summary = run_sweep(config, output, pool, on_run)
            analysis = predict_sweep(config, summary)
            paths = write_sweep_report(summary, analysis, f"{output}/report")
        except (SweepError, MixtureError, ValueError, OSError) as error:
            fail(str(error))
        click.echo(f"{len(summary['runs'])} runs ({summary['reused_runs']} reused); target: {summary['target']}")
        for kind, result in analysis["predictors"].items():
            weights = ", ".join(f"{name} {value:.3f}" for name, value in result["optimum"].items())
            click.echo(f"{kind:<10} held-out ρ {result['spearman']:+.3f}  optimum {weights}  "
                       f"predicted {result['optimum_loss']:.4f}")
        click.echo(f"chosen: {analysis['chosen']}")
        if "cmr" in analysis and analysis["cmr"]["critical_ratio"] is not None:
            click.echo(f"critical mixture ratio: {analysis['cmr']['critical_ratio']:.3f}")
        click.echo(f"report      {paths['html']}")

    return sweep


sweep_command = build_sweep_command()
commands.append(sweep_command)
