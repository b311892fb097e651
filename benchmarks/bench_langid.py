"""Language-ID throughput and accuracy: the `langid` stage with fastText's lid.176 (default) and with py3langid,
beside `ingest` (fastwarc + resiliparse extraction) on the same pages, in alternating rounds on one core.

Documents per CPU second of this one process (BLAS pinned to one thread), so the figures are per core; accuracy is
each model's agreement with the bundled sample's truth labels (pages.jsonl's `lang`), over all pages and over its
non-English (`multilingual`) pages.
"""

from __future__ import annotations

import argparse
import html
import io
import itertools
import json
import os
import platform
import statistics
import tempfile
import uuid
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from threadpoolctl import threadpool_limits

from benchmarks.rounds import as_json, markdown_table, run_rounds, summarise
from gristmill.pipeline.demo.sample import write_sample
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.pipeline.engine.executors import InProcessExecutor
from gristmill.pipeline.engine.graph import GraphSpec, NodeSpec, build_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.stages.filters.langid import LangId, LangIdConfig

SUBJECT = "langid (lid.176, first 2000 chars)"
# (model, max_chars): the defaults, then each model on whole documents.
SETTINGS = (("lid.176", 2000), ("py3langid", 2000), ("lid.176", None), ("py3langid", None))


def write_long_warc(path: Path, pages: list[dict], count: int, min_bytes: int) -> list[dict]:
    """`count` HTML captures, each the text of consecutive sample pages in one language joined to at least
    `min_bytes` (crawled pages are ~8 KB of text, the sample's ~1 KB); returns their id, lang and text."""
    by_language: dict[str, list[str]] = {}
    for page in pages:
        by_language.setdefault(page["lang"], []).append(page["text"])
    cycles = {lang: itertools.cycle(texts) for lang, texts in by_language.items()}
    order = itertools.cycle([page["lang"] for page in pages])
    long_pages = []
    with open(path, "wb") as handle:
        for index in range(count):
            lang, paragraphs = next(order), []
            while sum(len(text.encode()) for text in paragraphs) < min_bytes:
                paragraphs += next(cycles[lang]).split("\n")
            body = (f"<!DOCTYPE html><html lang=\"{lang}\"><head><title>{html.escape(paragraphs[0][:60])}</title>"
                    "</head><body><article>" + "".join(f"<p>{html.escape(text)}</p>" for text in paragraphs)
                    + "</article></body></html>").encode()
            block = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
            headers = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{uuid.UUID(int=index)}>\r\n"
                       f"WARC-Date: 2024-03-01T12:00:00Z\r\nWARC-Target-URI: https://long.example/{index}\r\n"
                       f"Content-Type: application/http; msgtype=response\r\n"
                       f"Content-Length: {len(block) + len(body)}\r\n\r\n")
            compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            handle.write(compressor.compress(headers.encode() + block + body + b"\r\n\r\n") + compressor.flush())
            long_pages.append({"id": index, "lang": lang, "kind": "multilingual" if lang != "en" else "prose",
                               "text": "\n".join(paragraphs)})
    return long_pages


def run_ingest(warc: Path, output: Path) -> int:
    """The real ingest stage (resiliparse, its default) in this process; returns the documents it wrote."""
    nodes = {"ingest": NodeSpec(stage="ingest", params={"paths": [str(warc)]})}
    graph = build_graph(GraphSpec(name="bench", plugins=["gristmill.stages.ingest.ingest"], stages=nodes),
                        "bench_langid", output)
    run_graph(graph, InProcessExecutor(), console=Console(file=io.StringIO()))
    return sum(pq.read_metadata(path).num_rows for path in (output / "ingest").glob("*.parquet"))


def langid_stage(model: str, max_chars: int | None) -> LangId:
    stage = LangId(LangIdConfig(model=model, max_chars=max_chars))
    stage.setup()
    return stage


def accuracy(stage: LangId, pages: list[dict]) -> dict:
    """Share of pages whose identified language is the truth label, all pages and non-English ones."""
    head = stage.config.max_chars
    codes, _ = stage.identifier.identify([page["text"][:head].replace("\n", " ") for page in pages])
    right = [code.split("-")[0] == page["lang"] for code, page in zip(codes, pages)]
    other = [hit for hit, page in zip(right, pages) if page["kind"] == "multilingual"]
    return {"all": sum(right) / len(right), "all_pages": len(right),
            "multilingual": sum(other) / len(other), "multilingual_pages": len(other)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-pages", type=int, default=2_000, help="captures in the bundled sample's WARC")
    parser.add_argument("--pages", type=int, default=2_000, help="long pages in the benchmark's WARC")
    parser.add_argument("--page-bytes", type=int, default=8_000, help="text per long page, at least")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-langid-") as workdir, threadpool_limits(1, user_api="blas"):
        root = Path(workdir)
        write_sample(root / "sample", pages=args.sample_pages, seed=0)
        pages = [json.loads(line) for line in (root / "sample" / "pages.jsonl").read_text().splitlines()]
        warc = root / "long.warc.gz"
        long_pages = write_long_warc(warc, pages, args.pages, args.page_bytes)
        documents = run_ingest(warc, root / "warmup")
        extracted = pa.concat_tables([pq.read_table(path) for path in (root / "warmup" / "ingest").glob("*.parquet")])
        batch = extracted.select(DOCUMENT_SCHEMA.names).combine_chunks().to_batches()[0]
        stages = {f"{model}, {f'first {head} chars' if head else 'whole text'}": langid_stage(model, head)
                  for model, head in SETTINGS}
        counter = iter(range(10**6))
        contenders = {f"langid ({setting})": (lambda stage=stage: stage.process(batch))
                      for setting, stage in stages.items()}
        contenders["ingest (fastwarc + resiliparse)"] = lambda: run_ingest(warc, root / f"r{next(counter)}")
        results = run_rounds(contenders, args.rounds)
        summary = summarise(results, documents, SUBJECT)
        cpu_rates = {name: statistics.median(documents / round_[name].cpu for round_ in results) for name in contenders}
        report = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "sample_pages": len(pages), "documents": documents,
            "mean_text_bytes": round(sum(len(text.encode()) for text in batch.column("text").to_pylist()) / documents),
            "docs_per_cpu_s": cpu_rates, "summary": summary,
            "accuracy": {model: {"sample_pages": accuracy(stage, pages), "long_pages": accuracy(stage, long_pages)}
                         for model, stage in stages.items()},
            "rounds": as_json(results),
        }
    print(markdown_table(summary, "docs/s", SUBJECT))
    print(json.dumps({key: report[key] for key in ("documents", "mean_text_bytes", "docs_per_cpu_s", "accuracy")},
                     indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
