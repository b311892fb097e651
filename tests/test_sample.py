"""The sample generator: byte-identical output, a WARC laid out like Common Crawl's, and honest truth labels."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest
from warcio.archiveiterator import ArchiveIterator

from gristmill.pipeline.demo.sample import SampleSummary, main, write_sample

REPO = Path(__file__).resolve().parent.parent
PAGES = 400
EXPECTED_SHARE = {"prose": 0.45, "multilingual": 0.12, "exact_duplicate": 0.08, "near_duplicate": 0.08,
                  "spam": 0.08, "low_quality": 0.06, "code": 0.05, "math": 0.04, "pii": 0.04}
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def read_warc(path: Path) -> list[dict]:
    records = []
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh):
            http = record.http_headers
            records.append({
                "type": record.rec_type, "id": record.rec_headers.get_header("WARC-Record-ID"),
                "uri": record.rec_headers.get_header("WARC-Target-URI"),
                "status": http.get_statuscode() if http and record.rec_type == "response" else None,
                "content_type": http.get_header("Content-Type") if http else None,
                "body": record.content_stream().read(),
            })
    return records


def word_shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = word_shingles(a), word_shingles(b)
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[SampleSummary, list[dict], list[dict]]:
    summary = write_sample(tmp_path_factory.mktemp("sample"), pages=PAGES, seed=0)
    rows = [json.loads(line) for line in summary.jsonl_path.read_text(encoding="utf-8").splitlines()]
    return summary, rows, read_warc(summary.warc_path)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path):
    first = write_sample(tmp_path / "a", pages=150, seed=7)
    second = write_sample(tmp_path / "b", pages=150, seed=7)
    other = write_sample(tmp_path / "c", pages=150, seed=8)
    for name in ("sample.warc.gz", "pages.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    assert first.kinds == second.kinds == other.kinds and first.records == other.records


@pytest.mark.slow
def test_output_does_not_depend_on_hash_seed(tmp_path: Path):
    write_sample(tmp_path / "here", pages=120, seed=3)
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "gristmill.pipeline.demo.sample", "--output", str(tmp_path / "there"),
                    "--pages", "120", "--seed", "3"], check=True, env=env, cwd=REPO, capture_output=True)
    for name in ("sample.warc.gz", "pages.jsonl"):
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "there" / name).read_bytes()


def test_warc_has_request_response_metadata_per_page(sample):
    summary, rows, records = sample
    types = Counter(r["type"] for r in records)
    assert types == {"warcinfo": 1, "request": PAGES, "response": PAGES, "metadata": PAGES}
    assert summary.records == len(records) and summary.pages == PAGES
    assert len({r["id"] for r in records}) == len(records)
    captures = records[1:]
    for request, response, metadata in zip(captures[0::3], captures[1::3], captures[2::3]):
        assert (request["type"], response["type"], metadata["type"]) == ("request", "response", "metadata")
        assert request["uri"] == response["uri"] == metadata["uri"]
        assert request["body"] == b"" and metadata["body"].startswith(b"fetchTimeMs: ")


def test_responses_include_pages_that_ingest_must_skip(sample):
    summary, rows, records = sample
    responses = [r for r in records if r["type"] == "response"]
    statuses = Counter(r["status"] for r in responses)
    assert statuses["404"] >= 1 and statuses["301"] >= 1
    types = {r["content_type"] for r in responses}
    assert {"application/pdf", "image/png", "text/html; charset=utf-8"} <= types
    html_ok = [r for r in responses if r["status"] == "200" and r["content_type"].startswith("text/html")]
    assert len(rows) == len(html_ok) == PAGES - sum(summary.kinds[k] for k in ("not_found", "redirect", "binary"))
    assert [row["url"] for row in rows] == [r["uri"] for r in html_ok]


def test_html_wraps_the_true_text_in_boilerplate(sample):
    _, rows, records = sample
    bodies = {r["uri"]: r["body"] for r in records if r["type"] == "response"}
    for row in rows:
        body = bodies[row["url"]].decode("utf-8")
        for marker in ("<nav", "We use cookies", "<footer", "<script>", "<h1>"):
            assert marker in body
        assert all(html.escape(line) in body for line in row["text"].split("\n") if line)
    assert {urlparse(row["url"]).hostname for row in rows} >= {"example-news.com", "de.example-wiki.de"}
    assert len({row["domain"] for row in rows}) >= 10


def test_jsonl_rows_are_well_formed(sample):
    summary, rows, _ = sample
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert row["source"] == "gristmill-sample" and row["text"].strip()
        assert row["domain"] == urlparse(row["url"]).hostname and row["url"].startswith("https://")
        assert datetime.fromisoformat(row["fetch_time"].replace("Z", "+00:00")).tzinfo is not None
        assert re.fullmatch(r"sample-\d{5}", row["id"]) and re.fullmatch(r"[a-z]{2}", row["lang"])
    assert Counter(row["kind"] for row in rows) == {k: summary.kinds[k] for k in EXPECTED_SHARE}


def test_kind_proportions_and_languages(sample):
    _, rows, _ = sample
    kinds = Counter(row["kind"] for row in rows)
    for kind, share in EXPECTED_SHARE.items():
        assert abs(kinds[kind] / PAGES - share) <= 0.02, kind
    langs = Counter(row["lang"] for row in rows if row["kind"] == "multilingual")
    assert set(langs) == {"de", "fr", "es", "bg", "zh", "ja"} and min(langs.values()) >= 5
    assert len({row["lang"] for row in rows}) >= 6
    by_lang = {row["lang"]: row["text"] for row in rows}
    assert " " not in by_lang["zh"] and " " not in by_lang["ja"] and re.search("[а-я]", by_lang["bg"])


def test_unlabelled_pages_do_not_repeat_text(sample):
    _, rows, _ = sample
    texts = Counter(row["text"] for row in rows if row["kind"] in ("prose", "pii", "code", "math", "multilingual"))
    assert texts.most_common(1)[0][1] == 1


def test_exact_duplicates_copy_an_earlier_prose_page(sample):
    _, rows, _ = sample
    by_id = {row["id"]: row for row in rows}
    duplicates = [row for row in rows if row["kind"] == "exact_duplicate"]
    assert duplicates
    for row in duplicates:
        original = by_id[row["duplicate_of"]]
        assert original["kind"] == "prose" and original["id"] < row["id"]
        assert row["text"] == original["text"] and row["url"] != original["url"]
        assert row["domain"] != original["domain"]
    assert all(row["duplicate_of"] is None for row in rows if not row["kind"].endswith("duplicate"))


def test_near_duplicates_are_close_but_not_identical(sample):
    _, rows, _ = sample
    by_id = {row["id"]: row for row in rows}
    near = [row for row in rows if row["kind"] == "near_duplicate"]
    assert near
    for row in near:
        original = by_id[row["duplicate_of"]]
        assert original["kind"] == "prose" and row["text"] != original["text"]
        assert 0.6 <= jaccard(row["text"], original["text"]) <= 0.95
        assert row["text"].count("\n\n") == original["text"].count("\n\n")


def test_special_kinds_carry_their_signals(sample):
    _, rows, records = sample
    bodies = {r["uri"]: r["body"] for r in records if r["type"] == "response"}
    of_kind = lambda kind: [row for row in rows if row["kind"] == kind]  # noqa: E731
    assert all(EMAIL.search(row["text"]) for row in of_kind("pii"))
    pii_text = " ".join(row["text"] for row in of_kind("pii"))
    assert re.search(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", pii_text) and re.search(r"\+\d{1,2} ", pii_text)
    for row in of_kind("spam"):
        lines = row["text"].split("\n\n")
        assert len(set(lines)) < len(lines) or any(line.isupper() for line in lines)
    assert all(len(row["text"].split()) < 200 for row in of_kind("low_quality"))
    assert all(b"<pre><code" in bodies[row["url"]] for row in of_kind("code"))
    assert all("$" in row["text"] and "\\frac" in row["text"] for row in of_kind("math"))


@pytest.mark.parametrize("pages", [1, 3, 25])
def test_small_samples(tmp_path: Path, pages: int):
    summary = write_sample(tmp_path, pages=pages, seed=1)
    assert sum(summary.kinds.values()) == pages
    assert Counter(r["type"] for r in read_warc(summary.warc_path))["response"] == pages


def test_cli_prints_one_summary_line(tmp_path: Path, capsys):
    main(["--output", str(tmp_path), "--pages", "30", "--seed", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["pages"] == 30
    assert (tmp_path / "sample.warc.gz").exists() and (tmp_path / "pages.jsonl").exists()
