"""A reproducible real-text crawl for recipe ablations (docs/ABLATION.md): Debian's documentation as a WARC with
a crawl's near duplicates, spam, boilerplate and junk injected in fixed proportions, plus disjoint held-out data.

Sources (installed with apt; this script installs nothing and exits 2 with the command when they are missing):
debian-reference-{en,fr,de}, debian-handbook, python3-doc, git-doc and postgresql-doc, read from their HTML
under /usr/share. Pages over 1 MiB (Common Crawl truncates there) and generated indexes (genindex, module
index, search) are left out.

English pages are split by a seeded hash of their URL into three disjoint pools (POOL_SHARES):
  crawl       the originals, and the pages that near/exact duplicates and shuffled junk are made from
  classifier  the positives of the quality classifier (quality_train.jsonl)
  reference   up to REFERENCE_DOCS clean pages (reference.jsonl), in neither the crawl nor the classifier's data

The crawl's pages per kind (KIND_SHARES, largest-remainder rounding of --pages):
  original         38%  real English documentation pages, as installed, under their project's host
  non_english       8%  debian-reference fr/de and debian-handbook translations, as installed (translated
                        pages only: under MAX_ENGLISH_SHARE of their words are English function words)
  near_duplicate   22%  mirrors of originals on other hosts: a mirror banner, a changed date, a few words edited,
                        at word-5-gram Jaccard about 0.82-0.95 with the original (measured: pages.jsonl)
  exact_duplicate   5%  byte-identical copies of originals on mirror hosts
  spam             12%  keyword-stuffed SEO pages, link farms, pills/casino/crypto pages, parked domains
  boilerplate      10%  cookie walls, login pages, tag/index pages that are mostly navigation
  shuffled          5%  a real page's words in random order
The classifier's negatives, as many as its positives, are the same generators under another seed
(NEGATIVE_SHARES: spam 30%, boilerplate 20%, shuffled classifier-pool pages 50%).
The same seed, --pages and installed package versions (recorded in corpus.json) give the same bytes.

Output (OUTPUT): crawl.warc.gz, pages.jsonl (id, url, kind, subkind, package, lang, duplicate_of, similarity per
WARC page), quality_train.jsonl, reference.jsonl, corpus.json, recipe.yaml, ablation.yaml; then quality_model/,
recipe/ (the recipe's run), funnel.json and, when `gristmill ablate` exists, ablation/.

Run: python benchmarks/ablation_debian.py --output runs/ablation-debian [--pages 3000] [--seed 0]
     [--no-run: corpus and configs only] [--no-ablate: stop after the recipe and its funnel]
"""

from __future__ import annotations

import argparse
import glob
import gzip
import html
import json
import random
import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path

import pyarrow.dataset as pads
import xxhash
from gristmill.pipeline.demo.sample import FILLER, _write_capture
from gristmill.pipeline.engine.documents import document_id
from gristmill.stages.ingest.html_extract import resiliparse_text
from warcio.warcwriter import WARCWriter

APT_PACKAGES = ("debian-reference-en", "debian-reference-fr", "debian-reference-de", "debian-handbook",
                "python3-doc", "git-doc", "postgresql-doc")
APT_COMMAND = "apt-get update && apt-get install -y " + " ".join(APT_PACKAGES)
DEFAULT_PAGES = 3000
# Shares of the crawl's pages per kind; they sum to 1.
KIND_SHARES = {
    "original": 0.38, "non_english": 0.08, "near_duplicate": 0.22, "exact_duplicate": 0.05,
    "spam": 0.12, "boilerplate": 0.10, "shuffled": 0.05,
}
# Shares of the English pages per pool, by a seeded hash of the URL.
POOL_SHARES = {"crawl": 0.58, "classifier": 0.30, "reference": 0.12}
REFERENCE_DOCS = 200
MIN_REFERENCE_WORDS = 150      # reference pages and classifier positives are real prose, not stubs
MIN_POSITIVE_WORDS = 50
MIN_MIRRORED_WORDS = 300       # near duplicates are made of pages long enough for small edits to stay small
NEAR_DUPLICATE_JACCARD = (0.82, 0.95)  # target word-5-gram Jaccard of a mirror's text with its original's
MAX_PAGE_BYTES = 1 << 20
# Many debian-handbook translations are partly untranslated: a page counts as non-English only when under
# this share of its words are common English function words (English prose: about 0.25).
MAX_ENGLISH_SHARE = 0.05
ENGLISH_FUNCTION_WORDS = frozenset(("the", "and", "of", "to", "is", "in", "that", "for", "with", "this", "are", "be",
                                    "on", "as", "by", "it", "you", "can"))
SHUFFLED_MAX_WORDS = 800
NEGATIVE_SEED_OFFSET = 1_000_003   # the classifier's negatives come from another random stream than the crawl's
NEGATIVE_SHARES = {"spam": 0.3, "boilerplate": 0.2, "shuffled": 0.5}
SKIPPED_NAMES = re.compile(r"^(genindex.*|py-modindex|search|bookindex)\.html")
START = datetime(2024, 3, 1, tzinfo=timezone.utc)
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://gristmill.invalid/ablation-debian")

MIRROR_HOSTS = {
    "debian-reference": ("debian.mirror.garr.it", "ftp.uni-stuttgart.de", "debian-docs.mirrorservice.org"),
    "debian-handbook": ("handbook.debian-fr.org", "debian-handbook.mirror.nl", "docs.linux-mirrors.net"),
    "python3-doc": ("python-docs.mirror.ac.uk", "docs.python-guide.cn", "pydocs.mirrors.ustc.edu.cn"),
    "git-doc": ("git-docs.mirror.kernel-archive.org", "gitdocs.mirrors.tuna.net", "docs.git-mirror.io"),
    "postgresql-doc": ("postgresql.mirror.ox.ac.uk", "pgdocs.mirrors.dotsrc.org", "docs.pg-mirror.jp"),
}
SEO_HOSTS = ("best-vpn-reviews-2024.com", "top10hosting-deals.net", "cheap-it-courses-online.info",
             "linux-vps-discount.xyz")
SEO_TOPICS = ("vpn", "web hosting", "linux vps hosting", "python course online", "free antivirus",
              "cloud backup deals", "essay writing service", "seo services")
LINK_FARM_HOSTS = ("seo-links-directory.biz", "free-backlinks-pro.net", "web-directory-submit.org")
SCAM_HOSTS = {"pills": ("cheap-meds-rx24.com", "pharmacy-no-prescription.net"),
              "casino": ("royal-casino-bonus.win", "slots-jackpot-free.bet"),
              "crypto": ("btc-profit-doubler.io", "crypto-signals-vip.xyz")}
SCAM_ITEMS = {"pills": ("viagra", "cialis", "tramadol", "xanax", "weight loss pills"),
              "casino": ("online casino", "free spins", "poker bonus", "slot machines", "sports betting"),
              "crypto": ("bitcoin", "ethereum", "crypto trading bot", "NFT presale", "altcoin signals")}
PARKED_HOSTS = ("pyhton.org", "debain.org", "gitt-scm.com", "postgressql.org", "docs-pyton.com",
                "debian-handbok.info")
BOILERPLATE_HOSTS = ("www.linux-tutorials.net", "devforum.io", "www.techblog-news.com", "forums.opensource-hub.org",
                     "community.sysadmin-notes.net")
JUNK_HOSTS = ("docs-archive-online.net", "free-manuals-pdf.info", "tutorials-hub.xyz")

SEO_SENTENCES = (
    "Looking for the best {kw}? Our {kw} guide lists every {kw} deal of {year}.",
    "The best {kw} is the {kw} that gives you the cheapest {kw} price, so compare {kw} offers today.",
    "Cheap {kw}, best {kw}, top {kw}, {kw} reviews, {kw} discount, {kw} coupon, {kw} {year}.",
    "Why choose our {kw}? Because our {kw} is the number one {kw} for {kw} users.",
    "Click here to get the best {kw} now and save up to 90% on {kw}!",
    "Thousands of customers trust our {kw} reviews to find the right {kw} at the lowest {kw} price.",
    "Our experts tested every {kw} so you do not have to: read the {kw} comparison below.",
    "Do not pay too much for {kw}: the {kw} deals on this page are updated every day.",
)
SCAM_SENTENCES = (
    "Buy {item} online without prescription, lowest prices guaranteed!",
    "BEST {ITEM} DEALS - ORDER NOW AND GET 70% OFF!!!",
    "Get {item} today with fast and discreet worldwide shipping.",
    "100% legal, 100% safe, 100% satisfaction with our {item}. Click here!",
    "Limited offer: claim your {item} bonus before midnight.",
    "Our {item} customers earned ${amount} in their first week!",
    "No credit check, no questions asked, instant {item} approval.",
    "Join {count} happy members who already use our {item} every day.",
)
TAGS = ("apt", "systemd", "networking", "python", "git", "postgresql", "security", "shell", "packaging", "ssh")
NAV = ("Home", "News", "Tutorials", "Forums", "Downloads", "About", "Contact", "Sign in", "Register")


@dataclass(frozen=True)
class Page:
    """One documentation page as installed: where it came from and the URL it is published under."""

    package: str
    path: Path
    url: str
    lang: str


@dataclass
class Text:
    """A page read and extracted once: bytes, title, main-content text."""

    page: Page
    body: bytes
    title: str
    text: str

    @property
    def words(self) -> int:
        return len(self.text.split())


class MissingDocs(Exception):
    """A documentation package is not installed; the message is the apt-get command that installs them."""


def _newest(share_dir: Path, pattern: str) -> Path | None:
    found = sorted(glob.glob(str(share_dir / pattern)))
    return Path(found[-1]) if found else None


def find_pages(share_dir: Path = Path("/usr/share")) -> list[Page]:
    """Every usable HTML page of the documentation packages under share_dir, sorted by URL."""
    roots = {
        "debian-reference": share_dir / "debian-reference",
        "debian-handbook": share_dir / "doc/debian-handbook/html",
        "python3-doc": _newest(share_dir, "doc/python3.*/html"),
        "git-doc": share_dir / "doc/git-doc",
        "postgresql-doc": _newest(share_dir, "doc/postgresql-doc-*/html"),
    }
    missing = [name for name, root in roots.items() if root is None or not root.is_dir()]
    languages = {lang: any((share_dir / "debian-reference").glob(f"*.{lang}.html")) for lang in ("en", "fr", "de")}
    missing += [f"debian-reference-{lang}" for lang, present in languages.items() if not present]
    if missing:
        raise MissingDocs(APT_COMMAND)
    python_version = roots["python3-doc"].parent.name.removeprefix("python")
    postgres_version = roots["postgresql-doc"].parent.name.removeprefix("postgresql-doc-")
    pages = []
    for package, root in roots.items():
        for path in sorted(root.rglob("*.html*")):
            relative = path.relative_to(root)
            name = relative.name.removesuffix(".gz")
            if (not name.endswith(".html") or path.is_symlink() or SKIPPED_NAMES.match(name)
                    or any(part.startswith("_") or part == "Common_Content" for part in relative.parts)
                    or path.stat().st_size > MAX_PAGE_BYTES):
                continue
            rel = relative.with_name(name).as_posix()
            if package == "debian-reference":
                lang = name.split(".")[-2]
                if not re.fullmatch(r"[a-z]{2}", lang):
                    continue
                url = f"https://www.debian.org/doc/manuals/debian-reference/{rel}"
            elif package == "debian-handbook":
                locale, _, rest = rel.partition("/")
                lang = locale.split("-")[0]
                url = f"https://debian-handbook.info/browse/{locale}/stable/{rest}"
            elif package == "python3-doc":
                lang, url = "en", f"https://docs.python.org/{python_version}/{rel}"
            elif package == "git-doc":
                lang, url = "en", f"https://git-scm.com/docs/{rel.removesuffix('.html')}"
            else:
                lang, url = "en", f"https://www.postgresql.org/docs/{postgres_version}/{rel}"
            pages.append(Page(package, path, url, lang))
    return sorted(pages, key=lambda page: page.url)


def read_page(page: Page) -> bytes:
    data = page.path.read_bytes()
    return gzip.decompress(data) if page.path.name.endswith(".gz") else data


def page_title(markup: str) -> str:
    match = re.search(r"<title[^>]*>(.*?)</title>", markup, re.IGNORECASE | re.DOTALL)
    title = html.unescape(" ".join(match.group(1).split())) if match else ""
    return title or "Documentation"


def extract(markup: str) -> str:
    """Main-content text the way `ingest` extracts it by default."""
    return resiliparse_text(markup).strip()


def read_text(page: Page) -> Text:
    body = read_page(page)
    markup = body.decode("utf-8", errors="replace")
    return Text(page, body, page_title(markup), extract(markup))


def english_share(text: str) -> float:
    """Share of words that are common English function words (about 0.25 in English prose)."""
    words = text.lower().split()
    return sum(word in ENGLISH_FUNCTION_WORDS for word in words) / max(1, len(words))


def pool_of(url: str, seed: int) -> str:
    """crawl, classifier or reference: a seeded hash of the URL against POOL_SHARES."""
    share = xxhash.xxh64_intdigest(f"{seed}\x1f{url}".encode()) / 2**64
    for pool, size in POOL_SHARES.items():
        if share < size:
            return pool
        share -= size
    return "reference"


def plan_counts(pages: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of pages x shares."""
    exact = {kind: pages * share / sum(shares.values()) for kind, share in shares.items()}
    counts = {kind: int(value) for kind, value in exact.items()}
    for kind in sorted(shares, key=lambda k: counts[k] - exact[k])[: pages - sum(counts.values())]:
        counts[kind] += 1
    return counts


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str) -> float:
    first, second = shingles(a), shingles(b)
    return len(first & second) / max(1, len(first | second))


# ---------------------------------------------------------------- generated pages


def render(title: str, body: str, site: str, lang: str = "en", nav: bool = True, extra_head: str = "") -> str:
    """A complete page: head, navigation, main content and footer, like a small site's template."""
    esc = html.escape
    menu = "".join(f'<li><a href="/{label.lower().replace(" ", "-")}">{label}</a></li>' for label in NAV)
    return (f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n<title>{esc(title)}</title>\n'
            f'{extra_head}<link rel="stylesheet" href="/assets/style.css">\n</head>\n<body>\n'
            + (f'<header><a class="logo" href="/">{esc(site)}</a><nav><ul>{menu}</ul></nav></header>\n' if nav else "")
            + f'<main>\n{body}\n</main>\n<footer><p>&copy; 2024 {esc(site)}. All rights reserved.</p>'
            '<p><a href="/privacy">Privacy policy</a> | <a href="/terms">Terms of use</a></p></footer>\n'
            "</body>\n</html>\n")


def seo_page(rng: random.Random) -> tuple[str, str]:
    keyword, year = rng.choice(SEO_TOPICS), rng.choice(("2023", "2024"))
    paragraphs = [" ".join(rng.choice(SEO_SENTENCES).format(kw=keyword, year=year)
                           for _ in range(rng.randint(3, 6))) for _ in range(rng.randint(4, 8))]
    title = f"Best {keyword} {year} - cheap {keyword}, {keyword} deals"
    head = f'<meta name="keywords" content="{", ".join([keyword] * 12)}">\n'
    body = f"<h1>{html.escape(title)}</h1>\n" + "\n".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    return rng.choice(SEO_HOSTS), render(title, body, "Top Reviews", extra_head=head)


def link_farm_page(rng: random.Random, sources: list[Text]) -> tuple[str, str]:
    host = rng.choice(LINK_FARM_HOSTS)
    links = []
    for _ in range(rng.randint(60, 160)):
        topic = rng.choice(SEO_TOPICS)
        anchor = rng.choice((topic, rng.choice(sources).title, f"{topic} {rng.randint(1, 99)}"))
        target = f"https://{rng.choice(SEO_HOSTS + LINK_FARM_HOSTS)}/{re.sub(r'[^a-z0-9]+', '-', anchor.lower())}"
        links.append(f'<li><a href="{target}">{html.escape(anchor)}</a></li>')
    body = ("<h1>Web directory: partner sites</h1>\n<p>Submit your site for free. Best links.</p>\n"
            f'<ul class="links">{"".join(links)}</ul>')
    return host, render("Free web directory - submit your link", body, "Link Directory")


def scam_page(rng: random.Random) -> tuple[str, str, str]:
    theme = rng.choice(sorted(SCAM_ITEMS))
    item = rng.choice(SCAM_ITEMS[theme])
    lines = [rng.choice(SCAM_SENTENCES).format(item=item, ITEM=item.upper(), amount=rng.randint(500, 9000),
                                                count=rng.randint(1000, 99000)) for _ in range(rng.randint(8, 18))]
    body = (f"<h1>{html.escape(item.upper())} - BEST PRICE ONLINE</h1>\n"
            + "\n".join(f"<p>{html.escape(line)}</p>" for line in lines)
            + '\n<p><a class="cta" href="/order">ORDER NOW</a></p>')
    return theme, rng.choice(SCAM_HOSTS[theme]), render(f"Buy {item} online - best price", body, f"{item.title()} Shop")


def parked_page(rng: random.Random) -> tuple[str, str]:
    host = rng.choice(PARKED_HOSTS)
    searches = rng.sample(("Linux Documentation", "Python Tutorial", "Web Hosting", "Free Software", "Cheap Flights",
                           "Online Courses", "VPN Service", "Database Software", "Cloud Storage", "Car Insurance"), 6)
    body = (f"<h1>{host}</h1>\n<p>This domain may be for sale!</p>\n<p><a href='/buy'>Buy this domain</a></p>\n"
            "<h2>Related searches</h2>\n<ul>" + "".join(f'<li><a href="/search?q={s}">{s}</a></li>' for s in searches)
            + "</ul>")
    return host, render(host, body, host, nav=False)


def cookie_wall_page(rng: random.Random) -> str:
    partners = rng.sample(("AdTech Media", "Audience Plus", "BrightClick", "DataBridge", "Exponential Reach",
                           "MetricHouse", "Nimbus Ads", "PixelTrack", "Quantum Audience", "SignalStack",
                           "TargetLoop", "Viewability Co"), rng.randint(6, 12))
    body = ("<h1>We value your privacy</h1>\n"
            f"<p>We and our {rng.randint(200, 900)} partners store and access information on your device, such as "
            "cookies, and process personal data, such as unique identifiers and standard information sent by a "
            "device, for personalised ads and content, ad and content measurement, and audience insights. "
            "See our cookie policy and privacy policy.</p>\n"
            "<p><button>Accept all</button> <button>Reject all</button> <button>Manage options</button></p>\n"
            "<h2>Partners</h2>\n<ul>" + "".join(f"<li>{p}</li>" for p in partners) + "</ul>")
    return render("Privacy settings", body, "Cookie consent", nav=False)


def login_page(rng: random.Random) -> str:
    body = ("<h1>Sign in</h1>\n<form><label>Email address</label><input type='email'>"
            "<label>Password</label><input type='password'><label><input type='checkbox'> Remember me</label>"
            "<button>Sign in</button></form>\n<p><a href='/reset'>Forgot your password?</a></p>\n"
            "<p>Don't have an account? <a href='/register'>Sign up</a></p>\n"
            + "".join(f"<p><a href='/oauth/{p.lower()}'>Continue with {p}</a></p>"
                      for p in rng.sample(("Google", "GitHub", "GitLab", "Microsoft", "Apple"), rng.randint(2, 4))))
    return render("Sign in", body, "Members area")


def tag_index_page(rng: random.Random, sources: list[Text]) -> str:
    """A tag archive: titles of real pages with a cut-off excerpt each, pagination and a tag cloud."""
    tag = rng.choice(TAGS)
    items = []
    for i, source in enumerate(rng.sample(sources, min(len(sources), rng.randint(10, 30)))):
        excerpt = " ".join(source.text.split()[:rng.randint(15, 35)])
        items.append(f'<article><h2><a href="/post/{i}">{html.escape(source.title)}</a></h2>'
                     f"<p>{html.escape(excerpt)} [&hellip;]</p><p class='meta'>{rng.randint(1, 28)} "
                     f'{rng.choice(("Jan", "Feb", "Mar", "Apr", "May"))} 2024 &middot; '
                     f'<a href="/post/{i}">Read more</a></p>'
                     "</article>")
    cloud = " ".join(f'<a href="/tag/{t}">{t}</a>' for t in rng.sample(TAGS, len(TAGS)))
    pages = " ".join(f'<a href="?page={n}">{n}</a>' for n in range(1, rng.randint(4, 12)))
    body = (f"<h1>Posts tagged &lsquo;{tag}&rsquo;</h1>\n{''.join(items)}\n"
            f"<div class='pagination'>{pages} <a href='?page=2'>Next &rsaquo;</a></div>\n"
            f"<aside><h2>Tags</h2>{cloud}</aside>")
    return render(f"{tag} | Tag archive", body, "Tag archive")


def shuffled_page(rng: random.Random, source: Text) -> str:
    words = source.text.split()
    words = rng.sample(words, min(len(words), SHUFFLED_MAX_WORDS))
    paragraphs, start = [], 0
    while start < len(words):
        size = rng.randint(40, 90)
        chunk = words[start:start + size]
        paragraphs.append(" ".join(chunk).capitalize().rstrip(".") + ".")
        start += size
    body = f"<h1>{html.escape(source.title)}</h1>\n" + "\n".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    return render(source.title, body, "Manuals Online")


def generated(kind: str, rng: random.Random, sources: list[Text]) -> dict:
    """One generated page of kind spam, boilerplate or shuffled (real text from `sources` where it needs some):
    subkind, url, html, and the URL of the page it shuffles."""
    source_url = None
    if kind == "spam":
        subkind = rng.choice(("seo", "link_farm", "scam", "parked"))
        if subkind == "seo":
            host, markup = seo_page(rng)
        elif subkind == "link_farm":
            host, markup = link_farm_page(rng, sources)
        elif subkind == "scam":
            subkind, host, markup = scam_page(rng)
        else:
            host, markup = parked_page(rng)
        path = "" if subkind == "parked" else f"{rng.choice(('deals', 'best', 'go', 'top'))}/{rng.randrange(10**6)}"
    elif kind == "boilerplate":
        subkind = rng.choice(("cookie_wall", "login", "tag_index"))
        host = rng.choice(BOILERPLATE_HOSTS)
        if subkind == "cookie_wall":
            markup, path = cookie_wall_page(rng), f"consent?return=/article/{rng.randrange(10**6)}"
        elif subkind == "login":
            markup, path = login_page(rng), f"login?next=/thread/{rng.randrange(10**6)}"
        else:
            markup, path = tag_index_page(rng, sources), f"tag/{rng.choice(TAGS)}/page/{rng.randint(2, 40)}"
    else:
        subkind, source = "shuffled", rng.choice(sources)
        host, markup, source_url = rng.choice(JUNK_HOSTS), shuffled_page(rng, source), source.page.url
        path = f"manual/{rng.randrange(10**6)}/{source.page.url.rstrip('/').rsplit('/', 1)[-1]}"
    return {"subkind": subkind, "url": f"https://{host}/{path}", "html": markup, "source_url": source_url}


# ---------------------------------------------------------------- near duplicates

_WORD = re.compile(r"(?<![&#\w])[A-Za-z]{3,}(?![\w;])")
_DATE_LINE = re.compile(r"((?:Last updated|Last modified|Copyright|&copy;|©)[^<]{0,60}?)((?:19|20)\d\d)")


def edit_spans(markup: str, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """Up to count distinct words of the body's paragraph text, found by probing random offsets; last first."""
    start = max(markup.lower().find("<body"), 0)
    chosen: set[tuple[int, int]] = set()
    for attempt in range(count * 60):
        if len(chosen) >= count or start >= len(markup):
            break
        match = _WORD.search(markup, rng.randrange(start, len(markup)))
        if match is None:
            continue
        at = match.start()
        in_tag = markup.rfind("<", 0, at) > markup.rfind(">", 0, at)
        in_paragraph = markup.rfind("<p", 0, at) > markup.rfind("</p>", 0, at)
        if not in_tag and (in_paragraph or attempt >= count * 40):  # late attempts take any text
            chosen.add(match.span())
    return sorted(chosen, reverse=True)


def mirror(original: Text, rng: random.Random, when: datetime) -> str:
    """A mirror's HTML: a banner, a changed date and a few words edited, sized to reach about a target
    word-5-gram Jaccard (NEAR_DUPLICATE_JACCARD) of its text with the original's."""
    markup = original.body.decode("utf-8", errors="replace")
    target = rng.uniform(*NEAR_DUPLICATE_JACCARD)
    banner_words = 20
    edits = max(1, round((original.words * (1 - target) - target * banner_words) / (5 * (1 + target))))
    for begin, end in edit_spans(markup, edits, rng):  # from the end, so earlier offsets stay valid
        operation = rng.random()
        if operation < 0.5:
            replacement = rng.choice(FILLER)
        elif operation < 0.75:
            replacement = f"{rng.choice(FILLER)} {markup[begin:end]}"
        else:
            replacement = ""
        markup = markup[:begin] + replacement + markup[end:]
    markup = _DATE_LINE.sub(lambda m: m.group(1) + str(rng.randint(2019, 2024)), markup, count=1)
    origin = original.page.url.split("/")[2]
    banner = (f'<div class="mirror-notice"><p>This is a mirror of {origin}, synchronised on {when:%d %B %Y}. '
              f'Please report problems with this mirror to the mirror administrators, not to the authors.</p></div>')
    body_tag = re.search(r"<body[^>]*>", markup, re.IGNORECASE)
    at = body_tag.end() if body_tag else 0
    return markup[:at] + banner + markup[at:]


def text_similarity(pair: tuple[str, str]) -> float:
    """Jaccard of an original's text with its mirror's extracted text (pair: text, mirror HTML)."""
    text, markup = pair
    return round(jaccard(text, extract(markup)), 4)


# ---------------------------------------------------------------- the corpus


def _record_id(seed: int, index: int, record: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(_NAMESPACE, f'{seed}/{index}/{record}')}>"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _package_versions() -> dict[str, str | None]:
    versions = {}
    for package in APT_PACKAGES:
        try:
            done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], check=False,
                                  capture_output=True, text=True)
            versions[package] = (done.stdout.strip() or None) if done.returncode == 0 else None
        except FileNotFoundError:
            versions[package] = None
    return versions


def build_corpus(output: Path, seed: int = 0, pages: int = DEFAULT_PAGES,
                 share_dir: Path = Path("/usr/share"), workers: int | None = None) -> dict:
    """Write crawl.warc.gz, pages.jsonl, quality_train.jsonl, reference.jsonl and corpus.json into output.

    The same (seed, pages) on the same installed packages gives the same bytes. Raises MissingDocs when a
    documentation package is missing. Returns the summary written to corpus.json. Extraction runs in a pool
    of `workers` processes (default: one per core).
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    found = find_pages(share_dir)
    english = [page for page in found if page.lang == "en"]
    foreign = [page for page in found if page.lang != "en"]
    pools: dict[str, list[Text]] = {pool: [] for pool in POOL_SHARES}
    with ProcessPoolExecutor(workers) as pool:
        for text in pool.map(read_text, english, chunksize=16):
            pools[pool_of(text.page.url, seed)].append(text)
    rng = random.Random(seed)

    counts = plan_counts(pages, KIND_SHARES)
    available = len(pools["crawl"])
    if counts["original"] > available:
        pages = int(available / KIND_SHARES["original"])
        counts = plan_counts(pages, KIND_SHARES)
        print(f"note: {available} crawl-pool pages allow at most {pages} crawl pages; writing {pages}", file=sys.stderr)
    originals = rng.sample(pools["crawl"], counts["original"])
    mirrorable = [text for text in originals if text.words >= MIN_MIRRORED_WORDS] or originals
    junk_sources = [text for text in pools["crawl"] if text.words >= MIN_REFERENCE_WORDS] or pools["crawl"]
    candidates = [p for p in foreign if p.package == "debian-reference"]
    candidates += rng.sample([p for p in foreign if p.package != "debian-reference"], len(foreign) - len(candidates))
    non_english = []
    for page in candidates:  # debian-reference first, then handbook translations in seeded order
        if len(non_english) == counts["non_english"]:
            break
        if english_share(read_text(page).text) < MAX_ENGLISH_SHARE:
            non_english.append(page)

    kinds = ["original"] * len(originals) + ["non_english"] * len(non_english)
    kinds += [kind for kind in ("near_duplicate", "exact_duplicate", "spam", "boilerplate", "shuffled")
              for _ in range(counts[kind])]
    rng.shuffle(kinds)
    queues = {"original": list(originals), "non_english": list(non_english)}
    when = START + timedelta(days=seed % 366)
    rows, used_urls, mirrors = [], set(), []
    info_id = _record_id(seed, -1, "warcinfo")
    warc_path = output / "crawl.warc.gz"
    with open(warc_path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        info = ("software: gristmill ablation_debian\r\nformat: WARC File Format 1.0\r\n"
                f"isPartOf: debian-docs-seed{seed}\r\n")
        writer.write_record(writer.create_warc_record(
            "", "warcinfo", payload=BytesIO(info.encode()), length=len(info.encode()),
            warc_content_type="application/warc-fields",
            warc_headers_dict={"WARC-Record-ID": info_id, "WARC-Date": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "WARC-Filename": warc_path.name}))
        for index, kind in enumerate(kinds):
            when += timedelta(seconds=rng.randint(1, 60), milliseconds=rng.randrange(1000))
            row = {"kind": kind, "subkind": kind, "package": None, "lang": "en", "duplicate_of": None,
                   "similarity": None}
            content_type = "text/html; charset=utf-8"
            if kind in ("original", "non_english"):
                item = queues[kind].pop()
                page = item.page if kind == "original" else item
                body = item.body if kind == "original" else read_page(item)
                url, content_type = page.url, "text/html"
                row.update(package=page.package, lang=page.lang)
            elif kind in ("near_duplicate", "exact_duplicate"):
                source = rng.choice(mirrorable if kind == "near_duplicate" else originals)
                host = rng.choice(MIRROR_HOSTS[source.page.package])
                url = f"https://{host}/{source.page.url.split('/', 3)[3]}"
                if kind == "near_duplicate":
                    markup = mirror(source, rng, when)
                    body = markup.encode()
                    mirrors.append((len(rows), source.text, markup))
                else:
                    body, content_type = source.body, "text/html"
                row.update(package=source.page.package, duplicate_of=source.page.url)
            else:
                made = generated(kind, rng, junk_sources)
                url, body = made["url"], made["html"].encode()
                row.update(subkind=made["subkind"], duplicate_of=made["source_url"])
            copy, base = 1, url
            while url in used_urls:  # a page mirrored twice on one host: a query-string variant, as crawls see
                copy += 1
                url = f"{base}{'&' if '?' in base else '?'}copy={copy}"
            used_urls.add(url)
            ids = [_record_id(seed, index, record) for record in ("request", "response", "metadata")]
            ip = f"203.0.113.{1 + xxhash.xxh32_intdigest(url.split('/')[2].encode()) % 254}"
            _write_capture(writer, info_id, ids, url, when, "200 OK", [("Content-Type", content_type)], body, ip,
                           rng.randint(40, 2500))
            rows.append({"id": document_id(ids[1]), "url": url, **row})
    with ProcessPoolExecutor(workers) as pool:
        similarities = pool.map(text_similarity, [(text, markup) for _, text, markup in mirrors], chunksize=8)
        for (index, _, _), similarity in zip(mirrors, similarities):
            rows[index]["similarity"] = similarity
    del mirrors
    _write_jsonl(output / "pages.jsonl", rows)

    # Classifier data: positives from the classifier pool, negatives from the same generators on another stream.
    positives = [text for text in pools["classifier"] if text.words >= MIN_POSITIVE_WORDS]
    negative_rng = random.Random(seed + NEGATIVE_SEED_OFFSET)
    train = [{"text": text.text, "label": "good", "url": text.page.url, "kind": "documentation"} for text in positives]
    for kind, count in plan_counts(len(positives), NEGATIVE_SHARES).items():
        made_count = 0
        while made_count < count:
            made = generated(kind, negative_rng, positives)
            text = extract(made["html"])
            if text:
                train.append({"text": text, "label": "bad", "url": made["source_url"] or made["url"],
                              "kind": made["subkind"]})
                made_count += 1
    _write_jsonl(output / "quality_train.jsonl", train)

    reference = [text for text in pools["reference"] if text.words >= MIN_REFERENCE_WORDS]
    reference.sort(key=lambda text: xxhash.xxh64_intdigest(f"{seed}/{text.page.url}".encode()))
    reference = reference[:REFERENCE_DOCS]
    _write_jsonl(output / "reference.jsonl", [{"id": text.page.url, "text": text.text, "package": text.page.package}
                                              for text in sorted(reference, key=lambda t: t.page.url)])

    by_kind: dict[str, dict[str, int]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], {}).setdefault(row["subkind"], 0)
        by_kind[row["kind"]][row["subkind"]] += 1
    similarities = sorted(row["similarity"] for row in rows if row["similarity"] is not None)
    summary = {
        "seed": seed, "pages": len(rows), "kind_shares": KIND_SHARES, "pool_shares": POOL_SHARES,
        "kinds": {kind: sum(sub.values()) for kind, sub in sorted(by_kind.items())},
        "subkinds": {kind: dict(sorted(sub.items())) for kind, sub in sorted(by_kind.items())},
        "packages_in_crawl": dict(sorted({p: sum(r["package"] == p for r in rows if r["kind"] == "original")
                                          for p in MIRROR_HOSTS}.items())),
        "near_duplicate_jaccard": ({"min": similarities[0], "median": similarities[len(similarities) // 2],
                                    "max": similarities[-1]} if similarities else None),
        "english_pages": {pool: len(texts) for pool, texts in pools.items()},
        "classifier": {"good": len(positives), "bad": len(train) - len(positives)},
        "reference_documents": len(reference),
        "warc_bytes": warc_path.stat().st_size,
        "package_versions": _package_versions(),
    }
    (output / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------- classifier, recipe, ablation


def gristmill_command() -> Path:
    return Path(sys.executable).parent / "gristmill"


def train_classifier(output: Path, seed: int = 0) -> None:
    """gristmill classifier train on quality_train.jsonl, with the settings docs/CLASSIFIERS.md gives for a few
    thousand documents, and word 3-grams: with 2-grams about a sixth of the shuffled pages scored as good."""
    train = str(output / "quality_train.jsonl")
    subprocess.run([str(gristmill_command()), "classifier", "train",
                    "--positive", train, "--positive-where", 'label == "good"',
                    "--negative", train, "--negative-where", 'label == "bad"',
                    "--epoch", "25", "--lr", "0.5", "--dim", "32", "--bucket", "100000", "--word-ngrams", "3",
                    "--seed", str(seed + 1),
                    "--output", str(output / "quality_model")], check=True)


RECIPE = """\
# The recipe over crawl.warc.gz (written by benchmarks/ablation_debian.py). No url_filter: the bundled
# blocklists name reserved example domains and adult words, none of which this crawl's spam uses, and a
# blocklist written from the generated hosts would only restate the generator.
#   gristmill run recipe.yaml --output recipe
name: debian-docs
stages:
  ingest:
    stage: ingest
    params:
      paths: ["${config_dir}/crawl.warc.gz"]
  language:
    stage: langid
    input: ingest
    params: {languages: [en], min_score: 0.5}
  exact_dedup:
    stage: exact_dedup
    input: language
  near_dedup:
    stage: near_dedup
    input: exact_dedup
    params: {threshold: 0.8}   # mirrors are written at word-5-gram Jaccard 0.82-0.95 with their originals
  gopher_quality:
    stage: gopher_quality
    input: near_dedup
  gopher_repetition:
    stage: gopher_repetition
    input: gopher_quality
  c4:
    stage: c4_filter
    input: gopher_repetition
  fineweb:
    stage: fineweb_filter
    input: c4
  scored:
    stage: quality_score
    input: fineweb
    params:
      models: [{column: quality, model: "${config_dir}/quality_model"}]
  clean:
    stage: quality_filter
    input: scored
    params: {column: quality, keep: {mode: threshold, threshold: QUALITY_THRESHOLD}}
"""
QUALITY_THRESHOLD = 0.5

ABLATION = """\
# Recipe ablation over the Debian documentation crawl (written by benchmarks/ablation_debian.py).
#   gristmill ablate ablation.yaml --output ablation --executor local
name: debian-docs
recipe:
  graph: recipe.yaml            # relative to this file
  output: recipe                # where the recipe runs (relative to this file); complete nodes are reused
  source: ingest                # the raw variant
  final: clean                  # the curated output (the held-out slice comes from it)
tokenizer:
  train: {vocab_size: 2048}     # trained on the final output minus the held-out slice
heldout:
  slice: {fraction: 0.1, max_documents: 300}
  sets: {reference: reference.jsonl}
proxy:
  model: tiny
  tokens: 262144
  seeds: [0, 1, 2]
  seq_len: 256
  tokens_per_step: 8192
  training: {learning_rate: 0.003, warmup_steps: 4}
variants:
  raw: true
  cumulative: [language, exact_dedup, near_dedup, gopher_quality, gopher_repetition, c4, fineweb, clean]
  leave_one_out: [near_dedup, clean]   # without clean holds the same documents as after fineweb (scored adds a column)
  threshold:
    quality: {node: scored, column: quality, top_percent: [10, 30, 60]}
  batching: [dd, concat]
"""


def write_configs(output: Path) -> list[str]:
    """Write recipe.yaml and ablation.yaml; return the recipe's node names in order."""
    recipe = RECIPE.replace("QUALITY_THRESHOLD", str(QUALITY_THRESHOLD))
    (output / "recipe.yaml").write_text(recipe)
    (output / "ablation.yaml").write_text(ABLATION)
    return re.findall(r"^  (\w+):\n    stage:", recipe, re.MULTILINE)


def _ids(dataset: Path) -> list[str]:
    return pads.dataset(str(dataset), format="parquet").to_table(columns=["id"]).column("id").to_pylist()


def funnel(output: Path, nodes: list[str], dedup_node: str = "near_dedup") -> dict:
    """Where each injected kind (and spam/boilerplate subkind) left the recipe, from the nodes' reject ledgers;
    and how many duplicate groups (an original with its mirrors and copies) kept exactly one copy after dedup."""
    with open(output / "pages.jsonl", encoding="utf-8") as fh:
        pages = [json.loads(line) for line in fh]
    by_id = {page["id"]: page for page in pages}
    columns = [*nodes, "kept"]
    kinds: dict[str, dict[str, int]] = {kind: dict.fromkeys(columns, 0) for kind in KIND_SHARES}
    subkinds: dict[str, dict[str, int]] = {}
    reasons: dict[str, dict[str, int]] = {}
    run = output / "recipe"

    def count(document: str, column: str, reason: str | None = None) -> None:
        page = by_id.get(document, {"kind": "unknown", "subkind": "unknown"})
        kinds.setdefault(page["kind"], dict.fromkeys(columns, 0))[column] += 1
        if page["subkind"] != page["kind"]:
            subkinds.setdefault(f"{page['kind']}/{page['subkind']}", dict.fromkeys(columns, 0))[column] += 1
        if reason:
            key = reason if ":" in reason else f"{column}:{reason}"  # most stages name themselves in the reason
            tally = reasons.setdefault(page["kind"], {})
            tally[key] = tally.get(key, 0) + 1

    for node in nodes:
        if (run / node / "_rejects").is_dir():
            ledger = pads.dataset(str(run / node / "_rejects"), format="parquet").to_table(columns=["id", "reason"])
            for document, reason in zip(ledger.column("id").to_pylist(), ledger.column("reason").to_pylist()):
                count(document, node, reason)
    for document in _ids(run / nodes[-1]):
        count(document, "kept")
    groups: dict[str, list[str]] = {}
    for page in pages:
        if page["kind"] == "original":
            groups.setdefault(page["url"], []).append(page["id"])
        elif page["kind"] in ("near_duplicate", "exact_duplicate"):
            groups.setdefault(page["duplicate_of"], []).append(page["id"])
    survivors = set(_ids(run / dedup_node))
    left = [sum(member in survivors for member in members) for members in groups.values() if len(members) > 1]
    return {"kinds": kinds, "subkinds": dict(sorted(subkinds.items())),
            "reasons": {kind: dict(sorted(tally.items(), key=lambda item: -item[1]))
                        for kind, tally in reasons.items()},
            "duplicate_groups": {"groups": len(left), "one_left": left.count(1), "none_left": left.count(0),
                                 "several_left": sum(n > 1 for n in left), "after": dedup_node}}


def print_funnel(result: dict) -> None:
    """The kind x node table (documents each node rejected; `kept` survived the last node)."""
    for table in (result["kinds"], result["subkinds"]):
        columns = list(next(iter(table.values())))
        width = max(len(name) for name in table) + 1
        print("rejected by".ljust(width) + "".join(f"{c:>{max(len(c), 5) + 1}}" for c in columns) + "   total")
        for name, row in table.items():
            print(name.ljust(width) + "".join(f"{row[c]:>{max(len(c), 5) + 1}}" for c in columns)
                  + f"{sum(row.values()):>8}")
        print()
    groups = result["duplicate_groups"]
    print(f"duplicate groups (an original with its copies): {groups['groups']}; after {groups['after']} one copy "
          f"left in {groups['one_left']}, none in {groups['none_left']}, several in {groups['several_left']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="a new or empty directory")
    parser.add_argument("--pages", type=int, default=DEFAULT_PAGES, help="crawl pages (WARC responses)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--share-dir", type=Path, default=Path("/usr/share"), help="where apt installed the docs")
    parser.add_argument("--no-run", action="store_true", help="write the corpus and configs only")
    parser.add_argument("--no-ablate", action="store_true", help="stop after the recipe and its funnel")
    args = parser.parse_args(argv)
    if args.output.exists() and any(args.output.iterdir()):
        print(f"{args.output} is not empty; give a new directory", file=sys.stderr)
        return 2
    gristmill = str(gristmill_command())
    timings: dict[str, float] = {}

    def timed(step: str, action):
        started = time.perf_counter()
        result = action()
        timings[step] = time.perf_counter() - started
        return result

    def report_timings() -> None:
        for step, seconds in timings.items():
            print(f"{step:>18}: {seconds:7.1f} s")

    try:
        summary = timed("build corpus", lambda: build_corpus(args.output, args.seed, args.pages, args.share_dir))
    except MissingDocs as missing:
        print(f"Debian documentation packages are missing; install them with: {missing}")
        return 2
    print(json.dumps({key: summary[key] for key in ("pages", "kinds", "subkinds", "english_pages", "classifier",
                                                    "reference_documents", "near_duplicate_jaccard")}, indent=1))
    nodes = write_configs(args.output)
    if args.no_run:
        report_timings()
        return 0
    timed("train classifier", lambda: train_classifier(args.output, args.seed))
    timed("run recipe", lambda: subprocess.run(
        [gristmill, "run", str(args.output / "recipe.yaml"), "--output", str(args.output / "recipe")], check=True))
    result = timed("funnel", lambda: funnel(args.output, nodes))
    (args.output / "funnel.json").write_text(json.dumps(result, indent=2) + "\n")
    print_funnel(result)
    status = 0
    if args.no_ablate:
        pass
    elif subprocess.run([gristmill, "ablate", "--help"], check=False, capture_output=True).returncode != 0:
        print("gristmill ablate is missing: ran the recipe only; ablation.yaml is written for it")
    else:
        done = timed("ablate", lambda: subprocess.run(
            [gristmill, "ablate", str(args.output / "ablation.yaml"), "--output", str(args.output / "ablation"),
             "--executor", "local"],
            check=False))
        if done.returncode != 0:
            print(f"gristmill ablate failed (exit {done.returncode}); the corpus, recipe run and funnel are complete")
            status = 1
    report_timings()
    return status


if __name__ == "__main__":
    sys.exit(main())
