"""Ingest throughput: Gristmill's `ingest` against datatrove's WarcReader + Trafilatura on the same WARCs and workers.

Runs Gristmill at its defaults (resiliparse) and with trafilatura, datatrove with its Trafilatura, in alternating rounds;
`--filters` adds the Gopher filters on both sides, `--memory` measures one worker's peak RSS on a ~1 GB WARC.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

from rich.console import Console

from gristmill.pipeline.demo.sample import write_sample
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import GraphSpec, NodeSpec, build_graph
from gristmill.pipeline.engine.runner import run_graph

REPO = Path(__file__).resolve().parent.parent
FILTERS = ("gopher_repetition", "gopher_quality")
CONTENDERS = ("gristmill", "gristmill_trafilatura", "datatrove_trafilatura")


def write_inputs(directory: Path, files: int, pages: int) -> list[Path]:
    """`files` bundled-sample WARCs of `pages` captures each (seeds differ, so the files do too)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(files):
        summary = write_sample(directory / f"tmp-{index}", pages=pages, seed=index)
        path = directory / f"part-{index:03d}.warc.gz"
        summary.warc_path.rename(path)
        shutil.rmtree(directory / f"tmp-{index}")
        paths.append(path)
    return paths


def run_gristmill(inputs: Path, output: Path, workers: int, extractor: str, filters: bool) -> int:
    """Run ingest (and the filters) through the real runner and a local process pool; returns documents in."""
    nodes = {"ingest": NodeSpec(stage="ingest", params={"paths": [str(inputs / "*.warc.gz")], "extractor": extractor})}
    plugins = ["gristmill.stages.ingest.ingest"]
    upstream = "ingest"
    for name in FILTERS if filters else ():
        nodes[name] = NodeSpec(stage=name, input=upstream)
        plugins.append(f"gristmill.stages.filters.{name}")
        upstream = name
    graph = build_graph(GraphSpec(name="bench", plugins=plugins, stages=nodes), "bench_ingest", output)
    with make_executor("local", workers) as executor:
        run_graph(graph, executor, console=Console(file=io.StringIO()))
    return Dataset(output / "ingest").manifest().rows_in


def run_datatrove(inputs: Path, output: Path, workers: int, tasks: int, filters: bool) -> int:
    """WarcReader + Trafilatura (+ the Gopher filters) + JsonlWriter, as datatrove's examples run it; returns the
    extraction timeouts (a busy machine makes more of them, and each costs datatrove up to a second)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    steps = [WarcReader(str(inputs), glob_pattern="*.warc.gz"), Trafilatura(favour_precision=True)]
    if filters:
        steps += [GopherRepetitionFilter(), GopherQualityFilter()]
    steps.append(JsonlWriter(str(output / "out")))
    LocalPipelineExecutor(steps, tasks=tasks, workers=workers, logging_dir=str(output / "logs"),
                          skip_completed=False).run()
    return extractor_timeouts(output / "logs" / "stats.json")


def extractor_timeouts(stats_path: Path) -> int:
    """Records datatrove skipped because extraction passed its per-document time limit (1 s by default)."""
    def walk(node) -> int:
        if isinstance(node, dict):
            value = node.get("timeout")
            own = value.get("total", 0) if isinstance(value, dict) else value if isinstance(value, int) else 0
            return own + sum(walk(child) for key, child in node.items() if key != "timeout")
        return sum(walk(child) for child in node) if isinstance(node, list) else 0
    return walk(json.loads(stats_path.read_text())) if stats_path.exists() else 0


def run_rounds(inputs: Path, files: int, workdir: Path, workers: int, rounds: int, filters: bool) -> list[dict]:
    """Each round runs every contender once; the order rotates so no one always goes first (or last)."""
    results = []
    for number in range(rounds):
        order = CONTENDERS[number % 3:] + CONTENDERS[:number % 3]
        seconds: dict[str, float] = {}
        for name in order:
            output = workdir / f"round-{number}-{name}"
            started = time.perf_counter()
            if name == "datatrove_trafilatura":
                seconds["datatrove_timeouts"] = run_datatrove(inputs, output, workers, files, filters)
            else:
                run_gristmill(inputs, output, workers, "trafilatura" if name.endswith("trafilatura") else "resiliparse",
                              filters)
            seconds[name] = time.perf_counter() - started
            shutil.rmtree(output)
        results.append(seconds)
        print(f"round {number + 1}/{rounds}: " + ", ".join(f"{name} {s:.1f}s" for name, s in seconds.items()
                                                             if name in CONTENDERS)
              + f"; datatrove extraction timeouts {seconds['datatrove_timeouts']}",
              file=sys.stderr)
    return results


def summarise(results: list[dict], documents: int) -> dict:
    rates = {name: [documents / r[name] for r in results] for name in CONTENDERS}
    ratios = {
        "gristmill_defaults_vs_datatrove": [r["datatrove_trafilatura"] / r["gristmill"] for r in results],
        "trafilatura_both_sides": [r["datatrove_trafilatura"] / r["gristmill_trafilatura"] for r in results],
    }
    return {
        "docs_per_s": {name: statistics.median(values) for name, values in rates.items()},
        "speedup": {name: statistics.median(values) for name, values in ratios.items()},
        "speedup_range": {name: (min(values), max(values)) for name, values in ratios.items()},
    }


def write_big_warc(path: Path, gigabytes: float, seed: int = 0) -> int:
    """A ~`gigabytes` GB gzipped WARC of ~45 KB pages (sample articles plus an inline script), one member per record.

    Written by hand with zlib level 1 from 64 prepared scripts: warcio's writer compresses at level 9,
    which would take many minutes for a gigabyte.
    """
    rng = random.Random(seed)
    sample = write_sample(path.parent / "big-sample", pages=300, seed=seed)
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    with open(sample.warc_path, "rb") as handle:
        pages = [record.reader.read() for record in ArchiveIterator(handle, record_types=WarcRecordType.response)]
    pages = [page for page in pages if page.startswith(b"<!DOCTYPE html>")]
    shutil.rmtree(path.parent / "big-sample")
    words = [("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9)))).encode() for _ in range(5_000)]
    scripts = [b"<script>var t='" + b" ".join(rng.choices(words, k=6_000)) + b"';</script></head>" for _ in range(64)]
    written = documents = 0
    with open(path, "wb") as handle:
        while written < gigabytes * 1e9:
            body = pages[documents % len(pages)].replace(b"</head>", scripts[documents % len(scripts)], 1)
            block = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\n\r\n" % len(body)
            headers = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{uuid.UUID(int=documents)}>\r\n"
                       f"WARC-Date: 2024-03-01T12:00:00Z\r\nWARC-Target-URI: https://big.example/{documents}\r\n"
                       f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(block) + len(body)}\r\n\r\n")
            compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            member = compressor.compress(headers.encode() + block + body + b"\r\n\r\n") + compressor.flush()
            handle.write(member)
            written += len(member)
            documents += 1
    return documents


def measure_memory(workdir: Path, gigabytes: float) -> dict:
    """Peak RSS of one worker running the ingest task of one ~1 GB WARC, as the process pool would."""
    path = workdir / "big.warc.gz"
    started = time.perf_counter()
    documents = write_big_warc(path, gigabytes)
    generated = time.perf_counter() - started
    code = (
        "import sys; from gristmill.pipeline.engine.tasks import ShardTask, run_task; "
        f"t = ShardTask('ingest', 'ingest', {{'paths': [{str(path)!r}]}}, {str(path)!r}, {str(workdir / 'out')!r}, "
        "'part-00000', ('gristmill.stages.ingest.ingest',)); "
        "from gristmill.pipeline.engine.dataset import Dataset; Dataset(t.output).prepare(); o = run_task(t); "
        "print(o.error or o.record.rows, file=sys.stderr)"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"warc_bytes": path.stat().st_size, "documents": documents, "generate_s": round(generated, 1),
            "ingest_s": round(seconds, 1), "peak_rss_mib": round(peak_kib / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4, help="WARC files (one task each)")
    parser.add_argument("--pages", type=int, default=5_000, help="captures per file")
    parser.add_argument("--workers", type=int, default=2, help="worker processes on both sides")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--filters", action="store_true", help="also run gopher_repetition and gopher_quality")
    parser.add_argument("--memory", action="store_true", help="only measure peak RSS on a generated ~1 GB WARC")
    parser.add_argument("--memory-gb", type=float, default=1.0, help="size of the WARC for --memory")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: system temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here as JSON")
    args = parser.parse_args()

    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=args.workdir) as workdir:
        workdir = Path(workdir)
        if args.memory:
            report = {"memory": measure_memory(workdir, args.memory_gb), "machine": machine}
            print(json.dumps(report, indent=2))
        else:
            try:
                import datatrove  # noqa: F401
            except ImportError:
                sys.exit("this benchmark compares with datatrove: pip install datatrove faust-cchardet python-magic")
            inputs = workdir / "warc"
            write_inputs(inputs, args.files, args.pages)
            results = run_rounds(inputs, args.files, workdir, args.workers, args.rounds, args.filters)
            documents = args.files * args.pages
            summary = summarise(results, documents)
            report = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                      "machine": machine, "documents": documents, "rounds": results, "summary": summary}
            print(f"{documents} captures in {args.files} WARC files, {args.workers} workers, "
                  f"{'ingest + extract + Gopher filters' if args.filters else 'ingest + extract'}; "
                  f"docs/s = WARC responses / wall seconds, median of {args.rounds} rounds\n")
            print("| pipeline | docs/s |\n|---|---:|")
            for name, rate in summary["docs_per_s"].items():
                print(f"| {name} | {rate:,.0f} |")
            print()
            for name, value in summary["speedup"].items():
                low, high = summary["speedup_range"][name]
                print(f"speedup {name}: {value:.2f}x (rounds {low:.2f}-{high:.2f})")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
