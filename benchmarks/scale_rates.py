"""Per-core cost of every stage of a crawl pipeline through the real runner: CPU seconds and disk bytes per document.

docs/SCALE.md multiplies these by a crawl's size. Each stage runs alone through `run_graph` on the in-process executor
(one core, native thread pools at one thread), so this process's CPU time is the stage's; a shared machine stretches
wall time far more than CPU time. Every filter, dedup and scoring stage reads the same input (langid's output), so each
rate is per document that reaches it; tokenize, decompose and export run as a chain.

Corpora: the bundled sample (`gristmill sample`: ~1 KB pages with spam, duplicates, code, PII, 10 languages), the
same pages joined into ~3.5 KB pages (bench_langid.py's long pages), and for ingest alone bench_ingest.py's ~45 KB
HTML pages (the size of Common Crawl responses: ~39,500 of them fill a 1 GB WARC).

Run: nice -n 19 python benchmarks/scale_rates.py --work DIR [--pages 20000] [--long-pages 8000] [--json PATH]
     nice -n 19 python benchmarks/scale_rates.py --work DIR --worker-memory 33000   # after the run above
     nice -n 19 python benchmarks/scale_rates.py --work DIR --requests              # needs moto[server]
"""

from __future__ import annotations

import os

for _variable in ("RAYON_NUM_THREADS", "POLARS_MAX_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # one core, as one worker of a pool per core

import argparse
import io
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # bench_langid.py imports benchmarks.rounds

from bench_ingest import write_big_warc
from bench_langid import write_long_warc
from gristmill.classifiers.training import train_classifier
from gristmill.pipeline.demo.sample import write_sample
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.executors import InProcessExecutor
from gristmill.pipeline.engine.graph import GraphSpec, NodeSpec, build_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.tokens.export import export_buckets
from gristmill.stages.quality.fasttext_model import TrainingParameters
from gristmill.stages.tokens.tokenization import (
    DEFAULT_EOS,
    save_tokenizer,
    train_byte_level_bpe,
)

BLOCKLISTS = REPO / "configs" / "blocklists"
# Every stage below reads langid's output unless it names another input.
STAGES: list[tuple[str, str, dict, str]] = [
    ("pass_through", "length_filter", {}, "langid"),  # keeps everything: the engine's own cost per stage
    ("url_filter", "url_filter", {"domains_file": str(BLOCKLISTS / "domains.txt"),
                                  "urls_file": str(BLOCKLISTS / "urls.txt"),
                                  "banned_words_file": str(BLOCKLISTS / "banned_words.txt")}, "langid"),
    ("gopher_quality", "gopher_quality", {}, "langid"),
    ("gopher_repetition", "gopher_repetition", {}, "langid"),
    ("c4_filter", "c4_filter", {}, "langid"),
    ("fineweb_filter", "fineweb_filter", {}, "langid"),
    ("pii", "pii", {}, "langid"),
    ("exact_dedup", "exact_dedup", {}, "langid"),
    ("near_dedup", "near_dedup", {}, "langid"),
    ("quality_score", "quality_score", {"models": ["quality={model}"]}, "langid"),
    ("quality_bucket", "quality_bucket", {"column": "quality"}, "quality_score"),
    ("tokenize", "tokenize", {"tokenizer": "{tokenizer}"}, "langid"),
    ("decompose", "decompose", {}, "tokenize"),
]


def cpu_seconds() -> float:
    return time.process_time()  # every thread of this process


def folder_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file()) if path.exists() else 0


def run_node(output: Path, name: str, stage: str, params: dict, source: str | None) -> dict:
    """One stage alone through the runner; its CPU and wall seconds, documents in and out, bytes on disk."""
    spec = GraphSpec(name=name, stages={name: NodeSpec(stage=stage, input=source, params=params)})
    graph = build_graph(spec, name, output)
    wall, cpu = time.perf_counter(), cpu_seconds()
    run_graph(graph, InProcessExecutor(), console=Console(file=io.StringIO()))
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    dataset = Dataset(output / name)
    manifest = dataset.manifest()
    work = folder_bytes(dataset.path / "_work")
    data = sum(record.bytes for record in manifest.shards)
    ledger = sum(record.ledger_bytes or 0 for record in manifest.shards)
    return {"stage": name, "documents_in": manifest.rows_in, "rows_out": manifest.rows,
            "rejected": sum(manifest.rejected.values()), "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            "docs_per_cpu_s": round(manifest.rows_in / cpu) if cpu else None,
            "us_per_doc": round(cpu / max(manifest.rows_in, 1) * 1e6, 1),
            "data_bytes": data, "ledger_bytes": ledger, "work_bytes": work,
            "files": sum(1 for entry in dataset.path.rglob("*") if entry.is_file())}


def train_quality_model(dataset: Path, directory: Path) -> Path:
    """A fastText quality classifier (the default parameters) on the corpus itself: prose-like pages (longer than
    the median) against the rest; what it learns does not matter here, only what scoring costs."""
    texts = pa.concat_arrays([batch.column("text") for batch in Dataset(dataset).iter_batches(columns=["text"])])
    lengths = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
    labels = np.where(lengths > np.median(lengths), "positive", "negative").astype(object)
    train_classifier(texts, labels, TrainingParameters(threads=1), directory, [], 0.1, binary=True)
    return directory


def train_tokenizer(dataset: Path, directory: Path) -> Path:
    """A 32,768-token byte-level BPE on the corpus (the size of a real pretraining vocabulary; uint16 tokens)."""
    texts = (text for batch in Dataset(dataset).iter_batches(columns=["text"]) for text in batch.column("text").to_pylist())
    save_tokenizer(train_byte_level_bpe(texts, 32_768), directory, DEFAULT_EOS, {"purpose": "scale_rates"})
    return directory


def measure_corpus(warc: Path, output: Path, with_models: bool) -> dict:
    """Ingest and langid, then every stage of STAGES from langid's output, then export."""
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    results = [run_node(output, "ingest", "ingest", {"paths": [str(warc)]}, None)]
    results.append(run_node(output, "langid", "langid", {}, str(output / "ingest")))
    text_bytes = Dataset(output / "langid").manifest()
    corpus = {"warc_bytes": warc.stat().st_size, "captures": results[0]["documents_in"],
              "documents": text_bytes.rows,
              "mean_text_bytes": round(sum(record.text_bytes_out for record in text_bytes.shards) / max(text_bytes.rows, 1))}
    if with_models:
        model = train_quality_model(output / "langid", output / "_quality_model")
        tokenizer = train_tokenizer(output / "langid", output / "_tokenizer")
        for name, stage, params, source in STAGES:
            params = json.loads(json.dumps(params).replace("{model}", str(model)).replace("{tokenizer}", str(tokenizer)))
            results.append(run_node(output, name, stage, params, str(output / source)))
        wall, cpu = time.perf_counter(), cpu_seconds()
        stats = export_buckets(output / "decompose", output / "export", seed=0)
        cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
        sequences = sum(bucket["sequences"] for bucket in stats["buckets"].values())
        documents = Dataset(output / "decompose").manifest().rows_in
        results.append({"stage": "export", "documents_in": documents, "sequences": sequences, "tokens": stats["tokens"],
                        "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                        "docs_per_cpu_s": round(documents / cpu) if cpu else None,
                        "us_per_doc": round(cpu / max(documents, 1) * 1e6, 1),
                        "tokens_per_cpu_s": round(stats["tokens"] / cpu) if cpu else None,
                        "data_bytes": folder_bytes(output / "export"), "ledger_bytes": 0, "work_bytes": 0,
                        "files": sum(1 for entry in (output / "export").rglob("*") if entry.is_file())})
        tokenized = Dataset(output / "tokenize")
        counts = [pc.sum(batch.column("num_tokens")).as_py() or 0 for batch in tokenized.iter_batches(["num_tokens"])]
        corpus["tokens_per_document"] = round(sum(counts) / max(tokenized.manifest().rows, 1), 1)
    return {"corpus": corpus, "stages": results}


MANIFEST_PROBE = """
import json, sys, time
from gristmill.pipeline.engine.dataset import Dataset
path, name, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
started = time.process_time()
Dataset(path).record(name)  # what every task's verified read does first: find its shard in the input's manifest
first = time.process_time() - started
started = time.process_time()
for _ in range(repeats):
    Dataset(path).record(name)
again = (time.process_time() - started) / repeats
print(json.dumps({"first_lookup_cpu_s": round(first, 3), "later_lookup_cpu_s": round(again, 4),
                  "peak_rss_mib": peak_rss_mib(), "rss_after_mib": rss_mib()}))
"""
# VmHWM starts afresh at exec, unlike ru_maxrss, which a child inherits from the process that forked it.
PEAK_RSS = ("def peak_rss_mib():\n    return next(int(line.split()[1]) // 1024 for line in open('/proc/self/status') "
            "if line.startswith('VmHWM'))\n"
            "def rss_mib():\n    import gc; gc.collect()\n    return next(int(line.split()[1]) // 1024 for line in "
            "open('/proc/self/status') if line.startswith('VmRSS'))\n")


def measure_manifest(template: Path, shards: int, languages: int, directory: Path) -> dict:
    """A manifest of `shards` records like `template` (a real langid shard record, its per-language counts widened
    to `languages` as a 35,000-document crawl shard has them), and what one task pays to find its record in it."""
    import subprocess

    from gristmill.pipeline.engine.dataset import (
        Manifest,
        ShardRecord,
        manifest_checksum,
        write_json_atomic,
    )

    record = json.loads(template.read_text())
    record["stats"] = {f"documents_lang:{index:03d}": 100 + index for index in range(languages)}
    records = [ShardRecord.model_validate(record | {"name": f"part-{index:05d}",
                                                    "source": f"{directory}/input/part-{index:05d}.parquet"})
               for index in range(shards)]
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    manifest = Manifest(stage="langid", config={}, config_hash="0" * 16, arrow_schema="", columns={}, shards=records,
                        rows=0, bytes=0, rows_in=0, rejected={}, stats={})
    manifest.arrow_schema = __import__("base64").b64encode(schema.serialize().to_pybytes()).decode()
    manifest.checksum = manifest_checksum(manifest)
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "_manifest.json", manifest.model_dump_json(indent=2))
    probe = subprocess.run([sys.executable, "-c", PEAK_RSS + MANIFEST_PROBE, str(directory), f"part-{shards - 1:05d}", "5"],
                           check=True, capture_output=True, text=True)
    baseline = subprocess.run([sys.executable, "-c", PEAK_RSS + "import gristmill.pipeline.engine.dataset\n"
                               "print(peak_rss_mib())"],
                              check=True, capture_output=True, text=True)
    return {"shards": shards, "record_bytes": len(records[0].model_dump_json(indent=2)),
            "manifest_bytes": (directory / "_manifest.json").stat().st_size,
            "import_rss_mib": int(baseline.stdout), **json.loads(probe.stdout)}


def manifests(template: Path, shards: int, work: Path) -> dict:
    """Langid's own output (counts of 120 languages in every record) and a plain record (a filter's)."""
    return {"langid_records": measure_manifest(template, shards, 120, work / "manifest-langid"),
            "plain_records": measure_manifest(template, shards, 0, work / "manifest-plain")}


def measure_worker_memory(warc: Path, output: Path) -> list[dict]:
    """Peak RSS of one pool worker while it runs each stage over one WARC file's documents (one shard), the worker
    kept from stage to stage as a real pool keeps it (so model and manifest caches stay with it)."""
    import psutil
    from gristmill.pipeline.engine.executors import LocalExecutor

    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    prepared = output / "_prepared"
    model = train_quality_model_from(warc, prepared)
    tokenizer = train_tokenizer(prepared / "langid", prepared / "_tokenizer")
    peaks: list[dict] = []
    with LocalExecutor(1) as executor:
        def run(name: str, stage: str, params: dict, source: str | None) -> None:
            spec = GraphSpec(name=name, stages={name: NodeSpec(stage=stage, input=source, params=params)})
            done, peak = [False], [0]

            def poll() -> None:
                while not done[0]:
                    for worker in psutil.Process().children(recursive=True):
                        try:
                            peak[0] = max(peak[0], worker.memory_info().rss)
                        except psutil.Error:
                            pass
                    time.sleep(0.1)

            import threading

            thread = threading.Thread(target=poll, daemon=True)
            thread.start()
            run_graph(build_graph(spec, name, output), executor, console=Console(file=io.StringIO()))
            done[0] = True
            thread.join()
            documents = Dataset(output / name).manifest().rows_in
            peaks.append({"stage": name, "documents_in": documents, "worker_peak_rss_mib": round(peak[0] / 2**20)})

        run("ingest", "ingest", {"paths": [str(warc)]}, None)
        run("langid", "langid", {}, str(output / "ingest"))
        for name, stage, params, source in STAGES:
            params = json.loads(json.dumps(params).replace("{model}", str(model)).replace("{tokenizer}", str(tokenizer)))
            run(name, stage, params, str(output / source))
    return peaks


def train_quality_model_from(warc: Path, prepared: Path) -> Path:
    """Ingest and langid in this process (not measured), then the quality model on their output."""
    spec = GraphSpec(name="prepare", stages={"ingest": NodeSpec(stage="ingest", params={"paths": [str(warc)]}),
                                             "langid": NodeSpec(stage="langid", input="ingest")})
    run_graph(build_graph(spec, "prepare", prepared), InProcessExecutor(), console=Console(file=io.StringIO()))
    return train_quality_model(prepared / "langid", prepared / "_quality_model")


REQUEST_LINE = r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP'  # 206 and 404 lines are coloured


def measure_requests(work: Path, shards: int, pages: int) -> dict:
    """Requests each stage makes when its datasets live on an S3-protocol store (moto's server on loopback, reached
    through AWS_ENDPOINT_URL_S3 as a user reaches any store), counted from the server's access log per stage."""
    import re
    import socket
    import subprocess
    import urllib.request
    from collections import Counter

    import s3fs
    from gristmill.pipeline.engine.files import as_location

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "moto.log"
    with open(log_path, "w") as log:
        command = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
        server = subprocess.Popen(command, stdout=log, stderr=log)
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            os.environ.update({"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
            s3fs.S3FileSystem.clear_instance_cache()
            s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing").mkdir("scale")
            warcs = work / "warcs"
            for index in range(shards):
                written = write_sample(work / f"sample-{index}", pages=pages, seed=index)
                warcs.mkdir(exist_ok=True)
                written.warc_path.rename(warcs / f"part-{index:03d}.warc.gz")
            output = "s3://scale/run"
            nodes = [("ingest", "ingest", {"paths": [str(warcs / "*.warc.gz")]}, None),
                     ("pass_through", "length_filter", {}, f"{output}/ingest"),
                     ("exact_dedup", "exact_dedup", {}, f"{output}/pass_through"),
                     ("near_dedup", "near_dedup", {}, f"{output}/pass_through")]
            counts = {}
            for name, stage, params, source in nodes:
                log.flush()
                before = len(log_path.read_text().splitlines())
                spec = GraphSpec(name=name, stages={name: NodeSpec(stage=stage, input=source, params=params)})
                run_graph(build_graph(spec, name, as_location(output)), InProcessExecutor(),
                          console=Console(file=io.StringIO()))
                time.sleep(0.5)
                lines = log_path.read_text().splitlines()[before:]
                methods: Counter[str] = Counter()
                for line in lines:
                    found = re.search(REQUEST_LINE, line)
                    if found:
                        method, target = found.groups()
                        methods["LIST" if method == "GET" and "list-type=" in target else method] += 1
                counts[name] = dict(sorted(methods.items()))
            return {"shards": shards, "pages_per_shard": pages, "requests": counts}
        finally:
            server.terminate()
            server.wait(timeout=10)
            for name in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
                os.environ.pop(name, None)


def markdown(name: str, measured: dict) -> str:
    corpus = measured["corpus"]
    lines = [(f"\n{name}: {corpus['captures']:,} captures, {corpus['documents']:,} documents after langid, "
              f"{corpus['mean_text_bytes']:,} text bytes each\n"),
             "| stage | documents in | CPU s | docs per CPU s | µs per doc | data + ledger + work bytes per doc in |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in measured["stages"]:
        stored = (row["data_bytes"] + row["ledger_bytes"] + row["work_bytes"]) / max(row["documents_in"], 1)
        lines.append(f"| {row['stage']} | {row['documents_in']:,} | {row['cpu_s']:.1f} | {row['docs_per_cpu_s'] or 0:,} "
                     f"| {row['us_per_doc']:,} | {stored:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch directory")
    parser.add_argument("--pages", type=int, default=20_000, help="captures in the bundled sample's WARC")
    parser.add_argument("--long-pages", type=int, default=8_000, help="~3.5 KB pages joined from the sample's")
    parser.add_argument("--html-gb", type=float, default=0.1, help="size of the ~45 KB-page WARC (ingest only)")
    parser.add_argument("--manifest-shards", type=int, default=90_000, help="shards in the manifest probe")
    parser.add_argument("--manifest-only", action="store_true", help="only the manifest probe (needs an earlier run)")
    parser.add_argument("--worker-memory", type=int, default=0, metavar="PAGES",
                        help="only: peak RSS of one pool worker per stage on one WARC of PAGES ~3.5 KB pages "
                             "(33,000: one Common Crawl file's captures); needs an earlier run's sample")
    parser.add_argument("--requests", action="store_true",
                        help="only: requests per stage with every dataset on an S3 server on loopback (moto), "
                             "at 4 and 8 shards, so the per-shard part separates from the per-stage part")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    template = args.work / "run-sample" / "langid" / "_shards" / "part-00000.json"
    if args.worker_memory:
        sample_pages = [json.loads(line) for line in (args.work / "sample" / "pages.jsonl").read_text().splitlines()]
        warc = args.work / "one-file.warc.gz"
        write_long_warc(warc, sample_pages, args.worker_memory, 3_000)
        peaks = measure_worker_memory(warc, args.work / "run-worker")
        print("\n| stage | documents in | worker peak RSS (MiB) |\n|---|---:|---:|")
        for row in peaks:
            print(f"| {row['stage']} | {row['documents_in']:,} | {row['worker_peak_rss_mib']:,} |")
        if args.json:
            args.json.write_text(json.dumps({"worker_memory": peaks, "pages": args.worker_memory}, indent=2))
        return
    if args.requests:
        result = {shards: measure_requests(args.work / f"requests-{shards}", shards, 200) for shards in (4, 8)}
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return
    if args.manifest_only:
        print(json.dumps(manifests(template, args.manifest_shards, args.work), indent=2))
        return

    sample = write_sample(args.work / "sample", pages=args.pages, seed=0)
    pages = [json.loads(line) for line in (args.work / "sample" / "pages.jsonl").read_text().splitlines()]
    long_warc = args.work / "long.warc.gz"
    write_long_warc(long_warc, pages, args.long_pages, 3_000)
    html_warc = args.work / "html" / "big.warc.gz"
    html_warc.parent.mkdir(exist_ok=True)
    write_big_warc(html_warc, args.html_gb)

    report = {
        "sample": measure_corpus(sample.warc_path, args.work / "run-sample", True),
        "long_pages": measure_corpus(long_warc, args.work / "run-long", True),
        "large_html": measure_corpus(html_warc, args.work / "run-html", False),
        "manifest": manifests(template, args.manifest_shards, args.work),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
    }
    for name in ("sample", "long_pages", "large_html"):
        print(markdown(name, report[name]))
    print(json.dumps({"manifest": report["manifest"]}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
