"""The same bytes on every executor, whatever BLAS thread count a worker was started with.

OpenBLAS rounds a long document's py3langid scores differently for each thread count, and Dask's
nanny starts workers with one thread where an in-process run has one per core.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import dask
import numpy as np
import pytest
from rich.console import Console
from threadpoolctl import threadpool_limits

from gristmill.stages.quality.fasttext_model import TrainingParameters, train_fasttext
from gristmill.stages.quality.preprocess import tokenize
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.executors import DaskExecutor, InProcessExecutor, make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.demo.sample import write_sample
from gristmill.pipeline.engine.stage import registered_stages
from gristmill.stages.tokens.tokenization import DEFAULT_EOS, save_tokenizer, train_byte_level_bpe
from gristmill.stages.filters.exclude import text_hash
from gristmill.stages.filters.langid import Py3LangidIdentifier
from tests.conftest import REPO, data_files
from tests.test_dask_cluster import loopback_cluster  # noqa: F401  (fixture)

# Stages the graph below leaves out: rewrite and annotate need a generative language model.
NEEDS_A_MODEL = {"rewrite", "annotate"}
# Thread counts whose OpenBLAS split of py3langid's 142 classes rounds differently from one thread's.
MANY_THREADS = (3, 5, 8)
QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("sample")
    write_sample(directory, pages=200)
    return directory


@pytest.fixture(scope="module")
def sample_pages(sample_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (sample_dir / "pages.jsonl").read_text().splitlines()]


def long_mixed_pages(pages: list[dict], count: int, seed: int = 0) -> list[dict]:
    """Long pages mixing English with other languages' sections, like a multilingual site's archive page:
    thousands of distinct features (where OpenBLAS starts threading) and a language that is not certain."""
    rng = random.Random(seed)
    english = [page["text"] for page in pages if page["lang"] == "en"]
    other = [page["text"] for page in pages if page["lang"] != "en"]
    documents = []
    for index in range(count):
        sections = rng.sample(english, rng.randint(1, 30)) + rng.sample(other, rng.randint(1, 25))
        rng.shuffle(sections)
        documents.append({
            "id": f"archive-{index}", "text": "\n".join(sections),
            "url": f"https://archive.example.org/{index}", "domain": "archive.example.org", "source": "archive",
        })
    return documents


def langid_scores(texts: list[str], blas_threads: int) -> np.ndarray:
    with threadpool_limits(blas_threads, user_api="blas"):
        return Py3LangidIdentifier().identify([text.replace("\n", " ") for text in texts])[1]


def test_py3langid_scores_of_long_pages_depend_on_the_blas_thread_count(sample_pages: list[dict]) -> None:
    texts = [page["text"] for page in long_mixed_pages(sample_pages, 40)]
    one_thread = langid_scores(texts, 1)
    assert any((langid_scores(texts, threads) != one_thread).any() for threads in MANY_THREADS)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def write_langid_graph(root: Path, pages: list[dict]) -> Path:
    corpus = write_jsonl(root / "archive.jsonl", long_mixed_pages(pages, 40))
    graph = root / "g.yaml"
    graph.write_text(f"name: t\nstages:\n  read:\n    stage: read_text\n    params: {{paths: ['{corpus}']}}\n"
                     "  language:\n    stage: langid\n    input: read\n    params: {min_score: 0.5}\n")
    return graph


def test_a_langid_run_writes_the_same_bytes_whatever_blas_threads_its_process_has(
    tmp_path: Path, sample_pages: list[dict]
) -> None:
    graph = write_langid_graph(tmp_path, sample_pages)
    for threads in (1, *MANY_THREADS):
        with threadpool_limits(threads, user_api="blas"):  # as a worker started with this many threads
            run_graph(load_graph(graph, tmp_path / f"threads{threads}"), InProcessExecutor(), console=QUIET)
    written = [data_files(tmp_path / f"threads{threads}") for threads in (1, *MANY_THREADS)]
    assert written[0] and all(files == written[0] for files in written)


def test_langid_writes_the_same_bytes_on_a_local_pool_and_a_hand_started_cluster(
    tmp_path: Path, sample_pages: list[dict], loopback_cluster: str
) -> None:
    """The cluster's workers run two tasks at once, each pinning and releasing the process's BLAS pool."""
    graph = write_langid_graph(tmp_path, sample_pages)
    with threadpool_limits(8, user_api="blas"):
        run_graph(load_graph(graph, tmp_path / "inprocess"), InProcessExecutor(), console=QUIET)
    with make_executor("local", workers=2) as pool:
        run_graph(load_graph(graph, tmp_path / "local"), pool, console=QUIET)
    with make_executor("dask", scheduler=loopback_cluster) as cluster:
        run_graph(load_graph(graph, tmp_path / "remote"), cluster, console=QUIET)
    expected = data_files(tmp_path / "inprocess")
    assert data_files(tmp_path / "local") == expected
    assert data_files(tmp_path / "remote") == expected


def test_a_run_stopped_on_one_executor_resumes_on_another_with_the_same_bytes(
    tmp_path: Path, sample_pages: list[dict]
) -> None:
    """Killed in-process (8 BLAS threads) after some langid shards, resumed on a Dask cluster (one thread per
    worker): the shards of both executors make one dataset, byte-identical to an uninterrupted run."""
    pages = long_mixed_pages(sample_pages, 40)
    for index in range(4):
        write_jsonl(tmp_path / "in" / f"part{index}.jsonl", pages[index * 10:(index + 1) * 10])
    graph = tmp_path / "g.yaml"
    graph.write_text(f"name: t\nstages:\n  read:\n    stage: read_text\n    params: {{paths: ['{tmp_path}/in/*.jsonl']}}\n"
                     "  language:\n    stage: langid\n    input: read\n    params: {min_score: 0.5}\n")
    with threadpool_limits(8, user_api="blas"):
        run_graph(load_graph(graph, tmp_path / "whole"), InProcessExecutor(), console=QUIET)
        run_graph(load_graph(graph, tmp_path / "stopped"), InProcessExecutor(), console=QUIET)
    language = tmp_path / "stopped" / "language"
    for name in ("_manifest.json", "_shards/part-00001.json", "_shards/part-00003.json", "part-00001.parquet",
                 "part-00003.parquet", "_rejects/part-00003.parquet"):  # as a kill leaves it, two shards short
        (language / name).unlink()
    with DaskExecutor(workers=2) as cluster:
        run_graph(load_graph(graph, tmp_path / "stopped"), cluster, console=QUIET)
    assert Dataset(language).is_complete
    assert data_files(tmp_path / "stopped") == data_files(tmp_path / "whole")


def train_model(path: Path, pages: list[dict], label_of: dict[str, str]) -> Path:
    chosen = [page for page in pages if page["kind"] in label_of]
    parameters = TrainingParameters(epoch=10, lr=0.5, dim=8, bucket=20_000, threads=1)
    run = train_fasttext(tokenize([page["text"] for page in chosen]), [label_of[page["kind"]] for page in chosen], parameters)
    run.model.save_model(str(path))
    return path


def every_cpu_stage_graph(root: Path, sample_dir: Path, pages: list[dict]) -> Path:
    """Both sources into one chain through every built-in CPU stage, with models trained on the sample."""
    archive = write_jsonl(root / "archive.jsonl", long_mixed_pages(pages, 24))
    prose = [page["text"].split("\n")[0] for page in pages if page["kind"] == "prose"]
    benchmark = write_jsonl(root / "benchmark.jsonl", [{"text": paragraph} for paragraph in prose[:6]])
    archived = [json.loads(line)["text"] for line in archive.read_text().splitlines()[:10]]
    listed = write_jsonl(root / "listed.jsonl", [{"text_hash": text_hash(text)} for text in archived])
    quality = train_model(root / "quality.bin", pages, {"prose": "hq", "spam": "lq", "low_quality": "lq"})
    domains = train_model(root / "domains.bin", pages, {"prose": "web", "code": "code", "math": "math"})
    tokenizer = root / "tokenizer"
    save_tokenizer(train_byte_level_bpe([page["text"] for page in pages], vocab_size=600), tokenizer, DEFAULT_EOS, {})
    blocklists = REPO / "configs" / "blocklists"
    graph = root / "every_stage.yaml"
    graph.write_text(f"""name: every-stage
stages:
  ingest: {{stage: ingest, params: {{paths: ['{sample_dir / "sample.warc.gz"}']}}}}
  read: {{stage: read_text, params: {{paths: ['{archive}']}}}}
  urls:
    stage: url_filter
    input: [ingest, read]
    params: {{domains_file: '{blocklists / "domains.txt"}', urls_file: '{blocklists / "urls.txt"}',
             banned_words_file: '{blocklists / "banned_words.txt"}'}}
  language: {{stage: langid, input: urls, params: {{min_score: 0.5}}}}
  lengths: {{stage: length_filter, input: language, params: {{min_words: 30}}}}
  exact: {{stage: exact_dedup, input: lengths}}
  near: {{stage: near_dedup, input: exact, params: {{threshold: 0.7}}}}
  gopher_quality: {{stage: gopher_quality, input: near}}
  gopher_repetition: {{stage: gopher_repetition, input: gopher_quality}}
  c4: {{stage: c4_filter, input: gopher_repetition}}
  fineweb: {{stage: fineweb_filter, input: c4}}
  pii: {{stage: pii, input: fineweb}}
  clean_bench:
    stage: decontaminate
    input: pii
    params: {{benchmarks: [{{name: bench, paths: ['{benchmark}']}}], ngram_words: 8}}
  scored: {{stage: quality_score, input: clean_bench, params: {{models: [{{column: quality, model: '{quality}', label: hq}}]}}}}
  levels: {{stage: quality_bucket, input: scored, params: {{column: quality, levels: 20}}}}
  labelled: {{stage: domain_label, input: levels, params: {{model: '{domains}'}}}}
  unlisted: {{stage: exclude, input: labelled, params: {{list: '{listed}'}}}}
  kept: {{stage: quality_filter, input: unlisted, params: {{column: quality, keep: {{mode: top_fraction, fraction: 0.8}}}}}}
  embedded: {{stage: embed, input: kept, params: {{max_tokens: 32, long_documents: mean, max_chunks: 2}}}}
  semantic: {{stage: semantic_dedup, input: embedded, params: {{threshold: 0.9, clusters: 4}}}}
  tokens: {{stage: tokenize, input: semantic, params: {{tokenizer: '{tokenizer}'}}}}
  buckets: {{stage: decompose, input: tokens, params: {{min_bucket: 5, max_bucket: 9}}}}
""")
    return graph


def shard_records(run: Path) -> dict[str, dict]:
    """Every shard record, timing left out and paths made relative to the run."""
    records = {}
    for path in sorted(run.rglob("_shards/*.json")):
        record = json.loads(path.read_text().replace(str(run), "RUN"))
        record.pop("seconds")
        records[str(path.relative_to(run))] = record
    return records


def test_every_cpu_stage_writes_the_same_bytes_in_process_and_on_dask_with_other_blas_settings(
    tmp_path: Path, sample_dir: Path, sample_pages: list[dict]
) -> None:
    graph_path = every_cpu_stage_graph(tmp_path, sample_dir, sample_pages)
    graph = load_graph(graph_path, tmp_path / "inprocess")
    built_in = {name for name, stage in registered_stages().items() if stage.__module__.startswith("gristmill.stages.")}
    assert {node.stage.name for node in graph.nodes} == built_in - NEEDS_A_MODEL  # test plugins may be registered too
    with threadpool_limits(8, user_api="blas"):  # a many-core machine's default
        run_graph(graph, InProcessExecutor(), console=QUIET)
    # Dask's nanny gives workers one BLAS thread by default; other pools get other sizes here.
    worker_environment = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment}), DaskExecutor(workers=2) as cluster:
        run_graph(load_graph(graph_path, tmp_path / "dask"), cluster, console=QUIET)

    in_process, on_dask = data_files(tmp_path / "inprocess"), data_files(tmp_path / "dask")
    assert {Path(name).parts[0] for name in in_process} == {node.name for node in graph.nodes}
    assert in_process == on_dask
    assert shard_records(tmp_path / "inprocess") == shard_records(tmp_path / "dask")
    manifests = {node.name: Dataset(tmp_path / "inprocess" / node.name).manifest() for node in graph.nodes}
    assert [name for name, manifest in manifests.items() if manifest.rows == 0] == []
    assert [name for name in ("language", "exact", "near", "clean_bench", "kept") if not manifests[name].rejected] == []
