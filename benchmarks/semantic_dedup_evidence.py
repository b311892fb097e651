"""What semantic dedup removes beyond exact and MinHash dedup, on a real corpus built offline: the same manuals
installed by Debian in several formats (HTML, their markup sources, man pages) plus templated release notes.

Sources (installed with apt; this script installs nothing and exits 2 with the command when they are missing):
  git          git-doc HTML pages and their AsciiDoc sources (.txt), git's man pages (man1/5/7, rendered with
               groff), and git's release notes (/usr/share/doc/git/RelNotes, one file per release)
  postgresql   postgresql-doc HTML pages (release notes of every 15.x included) and the man pages of
               postgresql-client (man1, man7: one per SQL command), rendered with groff
  python       python3-doc HTML pages and their reStructuredText sources (_sources/*.rst.txt), and the
               standard library's pydoc_data.topics (the reference sections pydoc shows)
Each file is one document (`source` names its family, e.g. git-html, git-man); generated indexes and search pages
are left out, as are files over 1 MiB and texts under MIN_CHARACTERS. The English pages of debian-handbook, which
the corpus does not contain, are written to reference.jsonl as a held-out set for `gristmill ablate`.

The graph (evidence.yaml): read_text -> exact_dedup -> near_dedup (MinHash, Jaccard 0.8) -> embed (bundled
all-MiniLM-L6-v2, first 256 tokens) -> semantic_dedup (cosine THRESHOLD, CLUSTERS k-means clusters). Everything
semantic dedup removes was kept by exact and MinHash dedup, since it reads their output.

Output (OUTPUT): corpus/*.jsonl, corpus.json, reference.jsonl, evidence.yaml, run/ (the graph's run),
removed_pairs.jsonl (duplicate and survivor id, family, url, snippet, cosine), evidence.json (removals per stage,
by family pair and cosine band, and all pairs at the threshold over the whole corpus without k-means), and
label_sample.jsonl (SAMPLE pairs drawn by seed, stratified by cosine band, with longer snippets for reading).

Run: python benchmarks/semantic_dedup_evidence.py --output runs/semantic-evidence
     python benchmarks/semantic_dedup_evidence.py --precision benchmarks/data/semantic_pairs_labelled.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
from gristmill.pipeline.engine.documents import document_id
from gristmill.stages.dedup.semantic_dedup import embedding_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_debian import SKIPPED_NAMES, extract, gristmill_command, page_title

APT_PACKAGES = ("git-doc", "git-man", "postgresql-doc", "postgresql-client", "python3-doc", "debian-handbook")
APT_COMMAND = "apt-get update && apt-get install -y " + " ".join(APT_PACKAGES)
MAX_BYTES = 1 << 20
MIN_CHARACTERS = 200
THRESHOLD = 0.9       # the stage's default
CLUSTERS = 16         # about 200 documents per k-means cluster here; the stage's default would be one cluster
NEAR_THRESHOLD = 0.8
BANDS = ((0.90, 0.93), (0.93, 0.96), (0.96, 0.99), (0.99, 1.0001))
SAMPLE = 100
SAMPLE_SEED = 0
REFERENCE_DOCS = 200
SNIPPET = 300
READING_SNIPPET = 900

GRAPH = """\
# Written by benchmarks/semantic_dedup_evidence.py: exact, MinHash and semantic dedup over the corpus.
name: semantic-evidence
stages:
  read:
    stage: read_text
    params: {paths: ["CORPUS/*.jsonl"]}
  exact_dedup:
    stage: exact_dedup
    input: read
  near_dedup:
    stage: near_dedup
    input: exact_dedup
    params: {threshold: NEAR_THRESHOLD}
  embed:
    stage: embed
    input: near_dedup
  semantic_dedup:
    stage: semantic_dedup
    input: embed
    params: {threshold: THRESHOLD, clusters: CLUSTERS}
"""
NODES = ("read", "exact_dedup", "near_dedup", "embed", "semantic_dedup")


class MissingDocs(Exception):
    """A package is not installed; the message is the apt-get command."""


def newest(pattern: str, share: Path) -> Path:
    found = sorted(path for path in share.glob(pattern) if not path.parent.is_symlink())
    if not found:
        raise MissingDocs(APT_COMMAND)
    return found[-1]


def render_man(path: str) -> str:
    """A man page as plain text, the way `man` shows it (groff, tbl, no overstrike), whitespace tidied."""
    source = gzip.decompress(Path(path).read_bytes()) if path.endswith(".gz") else Path(path).read_bytes()
    done = subprocess.run(["groff", "-t", "-man", "-Tutf8", "-P", "-cbou", "-rLL=100n"], input=source,
                          capture_output=True, check=False, env={**os.environ, "LC_ALL": "C.UTF-8"})
    text = done.stdout.decode("utf-8", errors="replace")
    lines = [line.rstrip() for line in text.splitlines()]
    header = re.compile(r"^\S.*\(\d\w*\)\s+.*\(\d\w*\)$")  # the running head and foot groff repeats
    return "\n".join(line for line in lines if not header.match(line)).strip()


def read_html(path: str) -> str:
    markup = Path(path).read_bytes().decode("utf-8", errors="replace")
    title = page_title(markup)
    text = extract(markup)
    return text if text.startswith(title[:20]) else f"{title}\n\n{text}"


def read_plain(path: str) -> str:
    return Path(path).read_bytes().decode("utf-8", errors="replace").strip()


def files_of(root: Path, pattern: str) -> list[Path]:
    chosen = []
    for path in sorted(root.rglob(pattern)):
        relative = path.relative_to(root)
        if (path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_BYTES
                or SKIPPED_NAMES.match(path.name) or any(part.startswith("_") for part in relative.parts[:-1])):
            continue
        chosen.append(path)
    return chosen


def plan(share: Path) -> list[tuple[str, str, str, str]]:
    """(source family, url, reader, path) per document, sorted."""
    git_doc = share / "doc/git-doc"
    postgres = newest("doc/postgresql-doc-*/html", share)
    python = newest("doc/python3.[0-9]*/html", share)
    postgres_man = newest("postgresql/*/man", share)
    relnotes = share / "doc/git/RelNotes"
    for needed in (git_doc, relnotes, python / "_sources", share / "man/man1/git-add.1.gz", postgres_man / "man7"):
        if not needed.exists():
            raise MissingDocs(APT_COMMAND)
    pg_version, py_version = postgres.parent.name.rsplit("-", 1)[-1], python.parent.name.removeprefix("python")
    items = []
    for path in files_of(git_doc, "*.html"):
        items.append(("git-html", f"https://git-scm.com/docs/{path.relative_to(git_doc).with_suffix('')}", "html",
                      str(path)))
    for path in files_of(git_doc, "*.txt"):
        url = f"https://github.com/git/git/blob/master/Documentation/{path.relative_to(git_doc)}"
        items.append(("git-asciidoc", url, "plain", str(path)))
    for section in ("man1", "man5", "man7"):
        for path in sorted((share / "man" / section).glob("git*.gz")):
            items.append(("git-man", f"man:{path.name.removesuffix('.gz')}", "man", str(path)))
    for path in sorted(relnotes.glob("*.txt")):
        items.append(("git-relnotes", f"https://github.com/git/git/blob/master/Documentation/RelNotes/{path.name}",
                      "plain", str(path)))
    for path in files_of(postgres, "*.html"):
        items.append(("postgresql-html", f"https://www.postgresql.org/docs/{pg_version}/{path.name}", "html",
                      str(path)))
    for section in ("man1", "man7"):
        for path in sorted((postgres_man / section).glob("*.gz")):
            items.append(("postgresql-man", f"man:{path.name.removesuffix('.gz')}", "man", str(path)))
    for path in files_of(python, "*.html"):
        items.append(("python-html", f"https://docs.python.org/{py_version}/{path.relative_to(python)}", "html",
                      str(path)))
    sources = python / "_sources"
    for path in sorted(sources.rglob("*.rst.txt")):
        if path.stat().st_size <= MAX_BYTES:
            items.append(("python-rst", f"https://docs.python.org/{py_version}/_sources/{path.relative_to(sources)}",
                          "plain", str(path)))
    return items


def read_item(item: tuple[str, str, str, str]) -> dict | None:
    family, url, reader, path = item
    text = {"html": read_html, "plain": read_plain, "man": render_man}[reader](path)
    if len(text) < MIN_CHARACTERS:
        return None
    return {"id": document_id(url), "text": text, "url": url, "source": family}


def pydoc_topics() -> list[dict]:
    from pydoc_data.topics import topics

    return [{"id": document_id(f"pydoc:{name}"), "text": text.strip(), "url": f"pydoc:{name}",
             "source": "python-pydoc"} for name, text in sorted(topics.items()) if len(text.strip()) >= MIN_CHARACTERS]


def package_versions() -> dict[str, str | None]:
    versions = {}
    for package in (*APT_PACKAGES, "postgresql-client-15"):  # the man pages come from the versioned package
        done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True,
                              check=False)
        versions[package] = done.stdout.strip() or None
    return versions


def build_corpus(output: Path, share: Path, workers: int) -> dict:
    items = plan(share)
    with ProcessPoolExecutor(workers) as pool:
        documents = [row for row in pool.map(read_item, items, chunksize=16) if row is not None]
    documents += pydoc_topics()
    corpus = output / "corpus"
    corpus.mkdir(parents=True)
    by_family: dict[str, list[dict]] = {}
    for row in documents:
        by_family.setdefault(row["source"], []).append(row)
    for family, rows in sorted(by_family.items()):
        with open(corpus / f"{family}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    handbook = sorted((share / "doc/debian-handbook/html/en-US").glob("*.html"))
    reference = [{"id": f"handbook/{path.name}", "text": read_html(str(path))} for path in handbook]
    reference = [row for row in reference if len(row["text"].split()) >= 150][:REFERENCE_DOCS]
    with open(output / "reference.jsonl", "w", encoding="utf-8") as handle:
        for row in reference:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = {"documents": len(documents), "families": {name: len(rows) for name, rows in sorted(by_family.items())},
               "characters": sum(len(row["text"]) for row in documents), "reference_documents": len(reference),
               "package_versions": package_versions(), "python": sys.version.split()[0]}
    (output / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def write_graph(output: Path) -> Path:
    graph = (GRAPH.replace("CORPUS", str((output / "corpus").resolve())).replace("NEAR_THRESHOLD", str(NEAR_THRESHOLD))
             .replace("THRESHOLD", str(THRESHOLD)).replace("CLUSTERS", str(CLUSTERS)))
    path = output / "evidence.yaml"
    path.write_text(graph)
    return path


# ---------------------------------------------------------------- analysis


def table_of(path: Path, columns: list[str]):
    return pads.dataset(str(path), format="parquet").to_table(columns=columns)


def removed_by(run: Path, node: str) -> list[dict]:
    ledger = run / node / "_rejects"
    if not ledger.is_dir():
        return []
    return table_of(ledger, ["id", "reason", "detail"]).to_pylist()


def band_of(cosine: float) -> str:
    for low, high in BANDS:
        if low <= cosine < high:
            return f"[{low:.2f}, {min(high, 1.0):.2f}{']' if high > 1 else ')'}"
    return "below"


def global_pairs(run: Path) -> dict:
    """Every pair at the threshold over the whole embedded corpus (no k-means), and what removing all but one per
    connected group would remove: what the stage's clusters cost in recall here."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    table = table_of(run / "embed", ["id", "embedding"])
    matrix, valid = embedding_rows(table.column("embedding"))
    unit = matrix.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)  # cosines, as the stage computes them
    similarity = unit @ unit.T
    left, right = np.nonzero(np.triu(similarity >= THRESHOLD, 1))
    size = len(unit)
    graph = coo_matrix((np.ones(len(left)), (left, right)), shape=(size, size))
    components, _ = connected_components(graph, directed=False)
    return {"embedded": int(valid.sum()), "pairs_at_threshold": len(left),
            "would_remove": int(size - components)}


def analyse(output: Path) -> dict:
    run = output / "run"
    texts = {row["id"]: row for row in table_of(run / "read", ["id", "text", "url", "source"]).to_pylist()}
    counts = {node: pads.dataset(str(run / node), format="parquet").count_rows() for node in NODES}
    removed = {node: removed_by(run, node) for node in NODES[1:]}
    pairs = []
    for row in removed["semantic_dedup"]:
        survivor, _, cosine = row["detail"].partition(" cosine=")
        survivor = survivor.removeprefix("survivor=")
        duplicate, kept = texts[row["id"]], texts[survivor]
        pairs.append({"duplicate_id": row["id"], "duplicate_source": duplicate["source"],
                      "duplicate_url": duplicate["url"], "duplicate_text": duplicate["text"][:SNIPPET],
                      "survivor_id": survivor, "survivor_source": kept["source"], "survivor_url": kept["url"],
                      "survivor_text": kept["text"][:SNIPPET], "cosine": float(cosine)})
    pairs.sort(key=lambda pair: (-pair["cosine"], pair["duplicate_id"]))
    with open(output / "removed_pairs.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)
    family_pairs = Counter(" & ".join(sorted((pair["survivor_source"], pair["duplicate_source"]))) for pair in pairs)
    result = {
        "documents": counts["read"], "threshold": THRESHOLD, "clusters": CLUSTERS, "near_threshold": NEAR_THRESHOLD,
        "removed": {node: len(rows) for node, rows in removed.items()},
        "kept": counts,
        "semantic_share_of_near_output": len(pairs) / max(1, counts["near_dedup"]),
        "semantic_share_of_corpus": len(pairs) / max(1, counts["read"]),
        "semantic_removed_by_family": dict(Counter(pair["duplicate_source"] for pair in pairs).most_common()),
        "semantic_family_pairs": dict(family_pairs.most_common()),
        "semantic_cosine_bands": dict(sorted(Counter(band_of(pair["cosine"]) for pair in pairs).items())),
        "exact_removed_by_family": dict(Counter(texts[row["id"]]["source"] for row in removed["exact_dedup"])),
        "near_removed_by_family": dict(Counter(texts[row["id"]]["source"] for row in removed["near_dedup"])),
        "whole_corpus_without_kmeans": global_pairs(run),
    }
    (output / "evidence.json").write_text(json.dumps(result, indent=2) + "\n")
    write_label_sample(output, pairs, texts)
    return result


def write_label_sample(output: Path, pairs: list[dict], texts: dict[str, dict]) -> None:
    """SAMPLE pairs drawn with SAMPLE_SEED, stratified by cosine band (equal shares, the remainder from the
    largest bands), with READING_SNIPPET characters of each side to read."""
    by_band: dict[str, list[dict]] = {}
    for pair in pairs:
        by_band.setdefault(band_of(pair["cosine"]), []).append(pair)
    rng = random.Random(SAMPLE_SEED)
    quota = {band: min(len(rows), SAMPLE // len(by_band)) for band, rows in by_band.items()}
    for band in sorted(by_band, key=lambda name: -len(by_band[name])):
        while sum(quota.values()) < min(SAMPLE, len(pairs)) and quota[band] < len(by_band[band]):
            quota[band] += 1
    chosen = []
    for band in sorted(by_band):
        rows = sorted(by_band[band], key=lambda pair: pair["duplicate_id"])
        for pair in rng.sample(rows, quota[band]):
            chosen.append({**{key: pair[key] for key in ("duplicate_id", "survivor_id", "cosine", "duplicate_url",
                                                          "survivor_url")},
                           "band": band, "band_pairs": len(rows),
                           "duplicate_text": texts[pair["duplicate_id"]]["text"][:READING_SNIPPET],
                           "survivor_text": texts[pair["survivor_id"]]["text"][:READING_SNIPPET]})
    with open(output / "label_sample.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in chosen)


def wilson(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    if not total:
        return (0.0, 1.0)
    share = successes / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (centre - half, centre + half)


def precision(path: Path) -> list[dict]:
    """Precision per cosine band and overall, strict (label `duplicate`) and lenient (`duplicate` or `template`),
    with Wilson 95% intervals; and the overall strict precision weighted by each band's pairs in the run."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[str, list[dict]] = {"all": rows}
    for row in rows:
        groups.setdefault(row["band"], []).append(row)
    table = []
    for name in ["all", *sorted(name for name in groups if name != "all")]:
        members = groups[name]
        entry = {"band": name, "pairs": len(members),
                 "band_pairs_in_run": sum({row["band"]: row["band_pairs"] for row in members}.values())}
        for rule, accepted in (("strict", {"duplicate"}), ("lenient", {"duplicate", "template"})):
            good = sum(row["label"] in accepted for row in members)
            low, high = wilson(good, len(members))
            entry[rule] = {"yes": good, "precision": round(good / len(members), 3),
                           "wilson_95": [round(low, 3), round(high, 3)]}
        table.append(entry)
    # The sample is stratified; weighting each band by its pairs in the run estimates the precision of all removals.
    bands = [entry for entry in table if entry["band"] != "all"]
    total = sum(entry["band_pairs_in_run"] for entry in bands)
    for rule in ("strict", "lenient"):
        weighted = sum(entry[rule]["precision"] * entry["band_pairs_in_run"] for entry in bands) / total
        table[0][f"{rule}_weighted_by_band"] = round(weighted, 3)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="a new or empty directory")
    parser.add_argument("--share-dir", type=Path, default=Path("/usr/share"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--analyse-only", action="store_true", help="rerun the analysis of an existing OUTPUT")
    parser.add_argument("--precision", type=Path, help="print precision from a labelled sample and exit")
    args = parser.parse_args(argv)
    if args.precision:
        for row in precision(args.precision):
            print(json.dumps(row))
        return 0
    if args.output is None:
        parser.error("--output is required")
    timings = {}
    if not args.analyse_only:
        if args.output.exists() and any(args.output.iterdir()):
            print(f"{args.output} is not empty; give a new directory", file=sys.stderr)
            return 2
        started = time.perf_counter()
        try:
            summary = build_corpus(args.output, args.share_dir, args.workers)
        except MissingDocs as missing:
            print(f"documentation packages are missing; install them with: {missing}")
            return 2
        timings["build corpus"] = time.perf_counter() - started
        print(json.dumps(summary, indent=1))
        graph = write_graph(args.output)
        started = time.perf_counter()
        subprocess.run([str(gristmill_command()), "run", str(graph), "--output", str(args.output / "run"),
                        "--workers", str(args.workers)], check=True)
        timings["run graph"] = time.perf_counter() - started
    started = time.perf_counter()
    result = analyse(args.output)
    timings["analyse"] = time.perf_counter() - started
    print(json.dumps(result, indent=1))
    for step, seconds in timings.items():
        print(f"{step:>14}: {seconds:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
