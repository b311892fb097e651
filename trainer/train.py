"""Train the bundled GPT on tokenized shards and report loss, bits per byte per held-out set, tokens/s and MFU.

One process, or one per GPU under `torchrun` (DDP); a rerun with the same config resumes from the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from gristmill.pipeline.engine.files import atomic_path
from gristmill.trainer.data import (
    IGNORE,
    Batch,
    BestFitBatcher,
    ConcatChunkBatcher,
    DecomposedBatcher,
    Plan,
    held_out_windows,
    largest_token_id,
    load_mixture_plan,
    shuffled_plan,
)
from gristmill.trainer.config import RESUMABLE_CHANGES, TrainConfig
from gristmill.trainer.model import GPT, GPTConfig

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
PLOT = "loss.png"
# Dense bf16 peak FLOP/s by device name, for MFU; other devices need --peak-flops.
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay, or constant then linear decay (wsd), down to min_lr_ratio of the peak."""
    peak, floor = config.learning_rate, config.learning_rate * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    decay_start = config.steps - int(config.decay_fraction * config.steps)
    if step < decay_start:
        return peak
    return peak - (peak - floor) * (step - decay_start + 1) / max(1, config.steps - decay_start)


def build_plan(config: TrainConfig) -> Plan:
    return load_mixture_plan(config.plan) if config.plan else shuffled_plan(list(config.data), config.seed)


def build_batcher(config: TrainConfig, plan: Plan) -> DecomposedBatcher | ConcatChunkBatcher | BestFitBatcher:
    if config.batching == "dd":
        return DecomposedBatcher(plan, config.tokens_per_step, config.curriculum, config.cycles, config.seed)
    if config.batching == "concat":
        return ConcatChunkBatcher(plan, config.seq_len, config.tokens_per_step)
    return BestFitBatcher(plan, config.seq_len, config.tokens_per_step, config.seed)


def device_peak_flops(config: TrainConfig, device: torch.device) -> float | None:
    if config.peak_flops or device.type != "cuda":
        return config.peak_flops
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def check_vocabulary(vocab_size: int, largest: int, what: str) -> None:
    """A token id past the embedding table would end in an IndexError deep inside torch; name the option instead."""
    if largest >= vocab_size:
        raise ValueError(f"--vocab-size {vocab_size} is too small for {what}: its largest token id is {largest}; "
                         f"give at least {largest + 1} or leave it out")


class HeldOut:
    """One held-out set as evaluation rows, with the UTF-8 bytes of the tokens they predict."""

    def __init__(self, name: str, path: str, seq_len: int, max_tokens: int) -> None:
        windows = held_out_windows(path, seq_len, max_tokens)
        self.name, self.predicted_bytes = name, windows.predicted_bytes
        self.inputs, self.targets, self.documents = (
            torch.from_numpy(array) for array in (windows.inputs, windows.targets, windows.document_ids))


@torch.no_grad()
def bits_per_byte(model: GPT, held_out: HeldOut, rows_per_pass: int, device: torch.device, autocast) -> float:
    """Cross-entropy of every predicted token, in bits, over the UTF-8 bytes those tokens decode to."""
    total_nats = 0.0
    for start in range(0, len(held_out.inputs), rows_per_pass):
        rows = slice(start, start + rows_per_pass)
        targets = held_out.targets[rows].to(device)
        with autocast():
            logits = model(held_out.inputs[rows].to(device), held_out.documents[rows].to(device))
        total_nats += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                      reduction="sum").item()
    return total_nats / math.log(2) / held_out.predicted_bytes


def save_atomically(payload: Any, path: Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(payload, temporary) if path.suffix == ".pt" else temporary.write_text(json.dumps(payload, indent=2))


def write_plot(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, bpb_axis) = plt.subplots(1, 2, figsize=(11, 4))
    tokens = [record["tokens"] for record in metrics["history"]]
    loss_axis.plot(tokens, [record["loss"] for record in metrics["history"]], linewidth=1)
    loss_axis.set(xlabel="tokens", ylabel="training loss (nats/token)", title="training loss")
    for name in metrics["heldout_names"]:
        points = [(record["tokens"], record["bits_per_byte"][name]) for record in metrics["evaluations"]]
        bpb_axis.plot(*zip(*points), marker="o", label=name)
    bpb_axis.set(xlabel="tokens", ylabel="bits per byte", title="held-out bits per byte")
    if metrics["heldout_names"]:
        bpb_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def summarize(history: list[dict], flops_per_step: list[float], world: int, peak: float | None) -> dict:
    """Throughput over the steps whose batch shape was seen before: the first of each shape compiles and warms up."""
    shapes_seen: set[tuple[int, int]] = set()
    steady = []
    for record, flops in zip(history, flops_per_step):
        if (record["rows"], record["seq_len"]) in shapes_seen:
            steady.append((record, flops))
        shapes_seen.add((record["rows"], record["seq_len"]))
    steady = steady or list(zip(history, flops_per_step))
    seconds = sum(record["seconds"] for record, _ in steady)
    flops = sum(flops for _, flops in steady)
    tokens = sum(record["step_tokens"] for record, _ in steady)
    achieved = flops / seconds / world
    return {
        "tokens_per_second": tokens / seconds,
        "tokens_per_second_per_device": tokens / seconds / world,
        "achieved_flops_per_device": achieved,
        "mfu": achieved / peak if peak else None,
        "peak_flops_per_device": peak,
    }


def train(config: TrainConfig, on_step: Callable[[dict], None] | None = None) -> dict:
    """Train to config.steps, resuming from OUTPUT/checkpoint.pt when present; returns the metrics written."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if distributed else (0, 1)
    if config.device == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)

    plan = build_plan(config)
    batcher = build_batcher(config, plan)
    longest = int(batcher.bucket_lengths[-1]) if config.batching == "dd" else config.seq_len
    rows_per_step = batcher.rows if config.batching == "dd" else np.array([batcher.rows])
    if np.any(rows_per_step % world):
        raise ValueError(f"rows per step {rows_per_step.tolist()} must divide evenly over {world} processes")
    vocab_size = config.vocab_size or plan.vocabulary_size()
    recorded_vocabulary = int(plan.tokenizer["vocab_size"]) if plan.tokenizer else None
    if config.vocab_size and (recorded_vocabulary is None or config.vocab_size < recorded_vocabulary):
        check_vocabulary(config.vocab_size, largest_token_id(plan.files), "the data")  # a full scan, only when in doubt
    scored_length = config.eval_seq_len or longest
    model_config = GPTConfig.named(config.model, vocab_size, max_seq_len=max(longest, scored_length))

    torch.manual_seed(config.seed)
    model = GPT(model_config).to(device)
    decayed = [parameter for parameter in model.parameters() if parameter.dim() >= 2]
    not_decayed = [parameter for parameter in model.parameters() if parameter.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": config.weight_decay}, {"params": not_decayed, "weight_decay": 0.0}],
        lr=config.learning_rate, betas=(config.beta1, config.beta2), fused=device.type == "cuda")

    start_step, history, evaluations, component_tokens = 0, [], [], np.zeros(len(plan.names), np.int64)
    checkpoint_path = output / CHECKPOINT
    if checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=True)
        changed = sorted(key for key, value in config.model_dump().items()
                         if key not in RESUMABLE_CHANGES and checkpoint["config"].get(key) != value)
        if changed:
            raise ValueError(f"{checkpoint_path} was made with a different {', '.join(changed)}; "
                             "use another --output or the same settings")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        batcher.load_state_dict(checkpoint["data_position"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if device.type == "cuda" and checkpoint["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"].cpu(), device)
        start_step, history, evaluations = checkpoint["step"], checkpoint["history"], checkpoint["evaluations"]
        component_tokens = np.array(checkpoint["component_tokens"], np.int64)

    forward = torch.compile(model, dynamic=False) if config.compile else model
    if distributed:
        forward = torch.nn.parallel.DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)

    held_out = [HeldOut(name, prefix, scored_length, config.eval_tokens) for name, prefix in config.heldout.items()] if rank == 0 else []
    for held in held_out:
        check_vocabulary(vocab_size, int(held.inputs.max()) if held.inputs.numel() else -1, f"held-out set {held.name}")
    # Held-out rows are document-masked: a pass holds rows × T² mask booleans, kept under 256 MiB.
    eval_rows = max(1, min((config.micro_batch_tokens or config.tokens_per_step) // scored_length,
                           (1 << 28) // scored_length**2))

    def evaluate(step: int) -> None:
        if held_out:
            model.eval()
            scores = {item.name: bits_per_byte(model, item, eval_rows, device, autocast) for item in held_out}
            model.train()
            evaluations.append({"step": step, "tokens": step * config.tokens_per_step, "bits_per_byte": scores})

    def save_checkpoint(step: int) -> None:
        if rank == 0:
            save_atomically({
                "config": config.model_dump(), "model_config": model_config.__dict__, "step": step,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "data_position": batcher.state_dict(), "history": history, "evaluations": evaluations,
                "component_tokens": component_tokens.tolist(),
                "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            }, checkpoint_path)

    flops_per_step: list[float] = []
    model.train()
    for step in range(start_step, config.steps):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        batch: Batch = batcher.next_batch()
        component_tokens = component_tokens + batch.component_tokens
        rows, seq_len = batch.inputs.shape
        predicted = max(1, int((batch.targets != IGNORE).sum()))
        local = slice(rank * rows // world, (rank + 1) * rows // world)
        rows_per_pass = max(1, (config.micro_batch_tokens or rows * seq_len) // seq_len)
        passes = range(local.start, local.stop, rows_per_pass)
        loss_sum = torch.zeros((), device=device)
        for index, first in enumerate(passes):
            chosen = slice(first, min(first + rows_per_pass, local.stop))
            inputs = torch.from_numpy(batch.inputs[chosen]).to(device, non_blocking=True)
            targets = torch.from_numpy(batch.targets[chosen]).to(device, non_blocking=True)
            documents = None if batch.document_ids is None else torch.from_numpy(batch.document_ids[chosen]).to(device)
            sync = not distributed or index == len(passes) - 1
            with contextlib.nullcontext() if sync else forward.no_sync():
                with autocast():
                    logits = forward(inputs, documents)
                    nats = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                           reduction="sum")
                # DDP averages gradients over processes, so scale to make the result the mean over the global batch.
                (nats * world / predicted).backward()
            loss_sum += nats.detach()
        if distributed:
            dist.all_reduce(loss_sum)
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_sum.item() / predicted
        seconds = time.perf_counter() - started
        record = {"step": step + 1, "tokens": (step + 1) * config.tokens_per_step, "loss": loss,
                  "lr": optimizer.param_groups[0]["lr"], "seq_len": seq_len, "rows": rows,
                  "step_tokens": rows * seq_len, "seconds": seconds}
        history.append(record)
        flops_per_step.append(rows * seq_len * model.flops_per_token(seq_len))
        if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
            evaluate(step + 1)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            save_checkpoint(step + 1)
        if on_step and rank == 0:
            on_step(record)

    if not evaluations or evaluations[-1]["step"] != config.steps:
        evaluate(config.steps)
    save_checkpoint(config.steps)
    memory, memory_kind = peak_memory_bytes(device)
    this_run = [record for record in history if record["step"] > start_step]
    metrics = {
        "config": config.model_dump(),
        "model": {"name": config.model, **model_config.__dict__, "parameters": model.parameter_count(),
                  "matmul_parameters": model.matmul_parameter_count(),
                  "flops_per_token_at_longest": model.flops_per_token(longest)},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processes": world,
        "throughput": summarize(this_run, flops_per_step, world, device_peak_flops(config, device)) if this_run else None,
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
        "final_loss": history[-1]["loss"],
        "final_bits_per_byte": evaluations[-1]["bits_per_byte"] if evaluations else {},
        "heldout_names": list(config.heldout),
        "mixture": {"components": plan.names, "planned_token_shares": plan.token_shares().tolist(),
                    "realised_token_shares": (component_tokens / max(component_tokens.sum(), 1)).tolist()},
        "data_position": batcher.state_dict(),
        "history": history,
        "evaluations": evaluations,
    }
    if rank == 0:
        save_atomically(metrics, output / METRICS)
        write_plot(metrics, output / PLOT)
    if distributed:
        dist.destroy_process_group()
    return metrics
