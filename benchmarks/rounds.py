"""Side-by-side timing in alternating rounds, shared by the benchmarks that compare Gristmill with another tool.

Every contender does the same work on the same data in every round and who goes first rotates, so load that
comes and goes on a shared machine falls on all of them; the summary is medians plus the median per-round ratio.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Wall-clock and CPU seconds (all threads of this process) of one contender in one round."""

    wall: float
    cpu: float


def run_rounds(contenders: dict[str, Callable[[], object]], rounds: int, label: str = "") -> list[dict[str, Timing]]:
    """Run every contender once per round, rotating the order; one dict of timings per round, in running order."""
    names = list(contenders)
    results = []
    for number in range(rounds):
        shift = number % len(names)
        timings = {}
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            contenders[name]()
            timings[name] = Timing(time.perf_counter() - wall, time.process_time() - cpu)
        results.append(timings)
        print(f"{label}round {number + 1}/{rounds}: " + ", ".join(f"{name} {timing.wall:.3f}s"
                                                                  for name, timing in timings.items()),
              file=sys.stderr)
    return results


def summarise(results: list[dict[str, Timing]], work: float, subject: str) -> dict:
    """Median rates (work per second, wall and CPU) with their range, and `subject`'s speed-up over each other
    contender: the other's seconds over the subject's, taken round by round, then the median and range."""
    names = list(results[0])
    rates = {}
    for name in names:
        wall = [work / round_[name].wall for round_ in results]
        cpu = [work / round_[name].cpu for round_ in results]
        rates[name] = {"median": statistics.median(wall), "range": [min(wall), max(wall)],
                       "cpu_median": statistics.median(cpu)}
    speedups = {}
    for name in names:
        if name == subject:
            continue
        wall = [round_[name].wall / round_[subject].wall for round_ in results]
        cpu = [round_[name].cpu / round_[subject].cpu for round_ in results]
        speedups[name] = {"median": statistics.median(wall), "range": [min(wall), max(wall)],
                          "cpu_median": statistics.median(cpu), "cpu_range": [min(cpu), max(cpu)]}
    return {"rounds": len(results), "rates": rates, "speedups": speedups}


def markdown_table(summary: dict, unit: str, subject: str) -> str:
    """One row per contender: median rate, its range, rate per CPU second, and `subject`'s per-round speed-up."""
    header = (f"| contender | median {unit} | range over rounds | {unit} per CPU s | {subject} speed-up, median "
              "(range) | by CPU time |")
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    for name, rate in summary["rates"].items():
        low, high = rate["range"]
        speedup = summary["speedups"].get(name)
        versus = (f"{speedup['median']:.2f}x ({speedup['range'][0]:.2f}–{speedup['range'][1]:.2f}) | "
                  f"{speedup['cpu_median']:.2f}x" if speedup else "— | —")
        lines.append(f"| {name} | {rate['median']:,.0f} | {low:,.0f}–{high:,.0f} | {rate['cpu_median']:,.0f} | {versus} |")
    return "\n".join(lines)


def as_json(results: list[dict[str, Timing]]) -> list[dict]:
    """Every round's timings, in running order, for a --json file."""
    return [{name: {"wall": timing.wall, "cpu": timing.cpu} for name, timing in round_.items()} for round_ in results]
