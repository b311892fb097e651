"""The url_filter stage: domains with their subdomains, exact URLs and banned URL words, each with its entry."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import gristmill.stages.filters.url_filter  # noqa: F401  (registers the stage)
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.stages.filters.url_filter import UrlFilter, UrlFilterConfig

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "configs" / "blocklists"


def batch_of(urls: list[str | None]) -> pa.RecordBatch:
    rows = [{"id": f"d{index}", "text": "some text", "url": url} for index, url in enumerate(urls)]
    return pa.RecordBatch.from_pylist(rows, schema=DOCUMENT_SCHEMA)


def stage_with(tmp_path: Path, threshold: int = 2, **lists: str) -> UrlFilter:
    files = {}
    for name, content in lists.items():
        path = tmp_path / f"{name}.txt"
        path.write_text(content)
        files[f"{name}_file"] = path
    stage = UrlFilter(UrlFilterConfig(soft_banned_word_threshold=threshold, **files))
    stage.setup()
    return stage


def outcomes(stage: UrlFilter, urls: list[str | None]) -> dict[str, tuple[str, str] | None]:
    """url -> (reason, detail) for rejected ones, None for kept ones."""
    result = stage.process(batch_of(urls))
    assert result.kept.num_rows + result.rejected.num_rows == len(urls)
    rejected = {row["id"]: (row["reason"], row["detail"]) for row in result.rejected.to_pylist()}
    return {url: rejected.get(f"d{index}") for index, url in enumerate(urls)}


def test_a_blocked_domain_blocks_its_subdomains_but_not_lookalikes(tmp_path: Path) -> None:
    stage = stage_with(tmp_path, domains="# spam farms\nexample.com\n*.bad.org  # wildcard form\n\nWWW.Shop.NET\n")
    assert outcomes(stage, [
        "https://example.com/a",
        "http://a.b.example.com:8080/x?y=1",
        "https://user:pw@EXAMPLE.COM./",
        "https://notexample.com/",
        "https://example.com.evil.io/",
        "https://bad.org",
        "https://cdn.bad.org/img.png",
        "https://www.shop.net/cart",
        "https://shop.net/cart",
        "example.com/no-scheme",
        None,
        "not a url",
    ]) == {
        "https://example.com/a": ("url_filter:domain", "example.com"),
        "http://a.b.example.com:8080/x?y=1": ("url_filter:domain", "example.com"),
        "https://user:pw@EXAMPLE.COM./": ("url_filter:domain", "example.com"),
        "https://notexample.com/": None,
        "https://example.com.evil.io/": None,
        "https://bad.org": ("url_filter:domain", "bad.org"),
        "https://cdn.bad.org/img.png": ("url_filter:domain", "bad.org"),
        "https://www.shop.net/cart": ("url_filter:domain", "www.shop.net"),
        "https://shop.net/cart": None,
        "example.com/no-scheme": ("url_filter:domain", "example.com"),
        None: None,
        "not a url": None,
    }


def test_the_most_specific_blocked_domain_is_reported(tmp_path: Path) -> None:
    stage = stage_with(tmp_path, domains="example.com\nads.example.com\n")
    url = "https://x.ads.example.com/"
    assert outcomes(stage, [url]) == {url: ("url_filter:domain", "ads.example.com")}


def test_blocked_urls_match_across_scheme_www_fragment_and_trailing_slash(tmp_path: Path) -> None:
    stage = stage_with(tmp_path, urls="# leaked pages\nhttps://www.site.com/Page/2/\n")
    assert outcomes(stage, [
        "http://site.com/page/2",
        "https://www.site.com/Page/2/#comments",
        "https://site.com/page/2/more",
        "https://site.com/page/20",
        "https://other.site.com/page/2",
    ]) == {
        "http://site.com/page/2": ("url_filter:url", "site.com/page/2"),
        "https://www.site.com/Page/2/#comments": ("url_filter:url", "site.com/page/2"),
        "https://site.com/page/2/more": None,
        "https://site.com/page/20": None,
        "https://other.site.com/page/2": None,
    }


def test_banned_words_match_whole_url_tokens_only(tmp_path: Path) -> None:
    stage = stage_with(tmp_path, banned_words="porn  # adult\nXXX\n")
    assert outcomes(stage, [
        "https://videos.example/free-porn-clips",
        "https://xxx.example/",
        "https://example.com/a?tag=Porn",
        "https://example.com/pornography-law-review",
        "https://example.com/essex/sussex",
        "https://example.com/porn_videos",
    ]) == {
        "https://videos.example/free-porn-clips": ("url_filter:banned_word", "porn"),
        "https://xxx.example/": ("url_filter:banned_word", "xxx"),
        "https://example.com/a?tag=Porn": ("url_filter:banned_word", "porn"),
        "https://example.com/pornography-law-review": None,
        "https://example.com/essex/sussex": None,
        # '_' is not alphanumeric, so it separates tokens as '-' does.
        "https://example.com/porn_videos": ("url_filter:banned_word", "porn"),
    }


def test_soft_banned_words_need_enough_different_ones(tmp_path: Path) -> None:
    stage = stage_with(tmp_path, threshold=2, soft_banned_words="sex\ncam\nlive\n")
    assert outcomes(stage, [
        "https://bbc.example/sex-education",
        "https://example.com/sex/sex/sex",
        "https://live-cam.example/",
        "https://example.com/sex-cam-live",
    ]) == {
        "https://bbc.example/sex-education": None,
        "https://example.com/sex/sex/sex": None,
        "https://live-cam.example/": ("url_filter:soft_banned_words", "cam,live"),
        "https://example.com/sex-cam-live": ("url_filter:soft_banned_words", "cam,live,sex"),
    }
    stricter = stage_with(tmp_path, threshold=3, soft_banned_words="sex\ncam\nlive\n")
    assert outcomes(stricter, ["https://live-cam.example/", "https://example.com/sex-cam-live"]) == {
        "https://live-cam.example/": None,
        "https://example.com/sex-cam-live": ("url_filter:soft_banned_words", "cam,live,sex"),
    }


def test_each_row_keeps_the_first_rule_in_order_domain_url_word(tmp_path: Path) -> None:
    stage = stage_with(tmp_path, domains="bad.com\n", urls="https://good.com/porn\n", banned_words="porn\n")
    assert outcomes(stage, ["https://bad.com/porn", "https://good.com/porn", "https://good.com/porn/2"]) == {
        "https://bad.com/porn": ("url_filter:domain", "bad.com"),
        "https://good.com/porn": ("url_filter:url", "good.com/porn"),
        "https://good.com/porn/2": ("url_filter:banned_word", "porn"),
    }


def test_the_example_block_lists_load_and_block(tmp_path: Path) -> None:
    stage = UrlFilter(UrlFilterConfig(
        domains_file=EXAMPLES / "domains.txt", urls_file=EXAMPLES / "urls.txt",
        banned_words_file=EXAMPLES / "banned_words.txt",
    ))
    stage.setup()
    assert outcomes(stage, [
        "https://www.casino-bonus.example/welcome",
        "https://img.adult-ads.example/banner.gif",
        "http://www.news.example.org/2019/05/leaked-customer-records/",
        "https://example.com/free-porn",
        "https://example.com/pornography-law",
    ]) == {
        "https://www.casino-bonus.example/welcome": ("url_filter:domain", "casino-bonus.example"),
        "https://img.adult-ads.example/banner.gif": ("url_filter:domain", "adult-ads.example"),
        "http://www.news.example.org/2019/05/leaked-customer-records/": (
            "url_filter:url", "news.example.org/2019/05/leaked-customer-records"),
        "https://example.com/free-porn": ("url_filter:banned_word", "porn"),
        "https://example.com/pornography-law": None,
    }


def test_config_needs_a_list_and_existing_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="give at least one of"):
        UrlFilterConfig()
    with pytest.raises(ValidationError, match="domains_file"):
        UrlFilterConfig(domains_file=tmp_path / "missing.txt")


def test_a_banned_entry_of_several_words_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"words.txt: 'free porn' is not one word"):
        stage_with(tmp_path, banned_words="xxx\nfree porn\n")


BLOCKED_DOMAINS = ["bad.com", "example.org", "www.casino.com"]
BLOCKED_URLS = ["https://good.com/news/1"]
SOFT_WORDS = ["cam", "live", "sex"]
hosts = st.lists(st.sampled_from(["www", "bad", "casino", "example", "good", "com", "org", "cam"]), min_size=1,
                 max_size=4)
paths = st.lists(st.sampled_from(["news", "1", "porn", "pornstar", "cam", "live", "sex", "ok"]), max_size=4)


def reference_outcome(scheme: str, host: list[str], separators: list[str], path: list[str]) -> str | None:
    """What the filter must decide, computed from the URL's parts rather than parsed from it."""
    host_name = ".".join(host)
    url = scheme + host_name + "/" + "".join(f"{word}{separator}" for word, separator in zip(path, separators))
    if any(host_name == domain or host_name.endswith("." + domain) for domain in BLOCKED_DOMAINS):
        return "url_filter:domain"
    key = url.lower().removeprefix("https://").removeprefix("http://").removeprefix("www.").rstrip("/")
    if key in {blocked.removeprefix("https://") for blocked in BLOCKED_URLS}:
        return "url_filter:url"
    tokens = set(re.findall(r"[^\W_]+", url.lower()))
    if "porn" in tokens:
        return "url_filter:banned_word"
    if len(tokens & set(SOFT_WORDS)) >= 2:
        return "url_filter:soft_banned_words"
    return None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["https://", "http://", ""]), hosts,
                          st.lists(st.sampled_from(["/", "-", "_", ".", "?q="]), min_size=4, max_size=4), paths),
                max_size=20))
def test_every_url_gets_the_decision_of_a_reference_implementation(tmp_path_factory, parts) -> None:
    stage = stage_with(
        tmp_path_factory.mktemp("lists"), domains="\n".join(BLOCKED_DOMAINS), urls="\n".join(BLOCKED_URLS),
        banned_words="porn\n", soft_banned_words="\n".join(SOFT_WORDS),
    )
    urls = [scheme + ".".join(host) + "/" + "".join(f"{w}{s}" for w, s in zip(path, separators))
            for scheme, host, separators, path in parts]
    result = stage.process(batch_of(urls))
    assert result.kept.num_rows + result.rejected.num_rows == len(urls)
    decided = dict(zip(result.rejected.column("id").to_pylist(), result.rejected.column("reason").to_pylist()))
    assert [decided.get(f"d{index}") for index in range(len(urls))] == [reference_outcome(*part) for part in parts]
