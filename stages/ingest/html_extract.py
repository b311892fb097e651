"""HTML to text for `ingest`: decode page bytes (declared, then detected charset) and extract the main content.

Resiliparse by default (fast), trafilatura as an option; a watchdog thread enforces the per-document time limit in any thread.
"""

from __future__ import annotations

import codecs
import ctypes
import functools
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Literal

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import detect_encoding, map_encoding_to_html5
from resiliparse.parse.html import HTMLTree

Extractor = Literal["resiliparse", "trafilatura"]

# A page whose best decoding replaces more than this share of its characters is `undecodable`.
MAX_REPLACED_SHARE = 0.01
META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
META_SCAN_BYTES = 4096
# Resiliparse's main-content pass slows down with the square of <div> nesting and holds the GIL
# (2,000 nested divs: 1.7 s; 20,000: 108 s), so no in-process limit can stop it: deeper pages are rejected first.
MAX_DIV_NESTING = 1_000
DIV_TAG = re.compile(r"<(/?)div\b", re.IGNORECASE)
WATCHDOG_POLL_S = 0.05
# After the first interrupt, the watchdog interrupts again this often until the extraction gives up.
WATCHDOG_REPEAT_S = 1.0


def charset_from_content_type(content_type: str | None) -> str | None:
    match = HEADER_CHARSET.search(content_type) if content_type else None
    return match.group(1) if match else None


@functools.lru_cache(maxsize=1024)
def _codec(label: str | None) -> str | None:
    """The Python codec a browser would use for a charset label (WHATWG mapping), or None if unknown."""
    codec = map_encoding_to_html5(label.strip().lower(), fallback_utf8=False) if label else None
    try:
        return codecs.lookup(codec).name if codec else None
    except LookupError:
        return None


def decode_html(body: bytes, http_charset: str | None) -> tuple[str | None, str]:
    """(text, codec) using the HTTP charset, then `<meta charset>`, then UTF-8, then a detected charset.

    The first codec that decodes every byte wins. If none does, the most authoritative one decodes
    with replacement characters; past MAX_REPLACED_SHARE of them the text is None (undecodable).
    """
    meta = META_CHARSET.search(body, 0, META_SCAN_BYTES)
    candidates = [_codec(http_charset), _codec(meta.group(1).decode("ascii")) if meta else None, "utf-8"]
    tried: list[str] = []
    for codec in candidates:
        if codec is None or codec in tried:
            continue
        tried.append(codec)
        try:
            return body.decode(codec), codec
        except UnicodeDecodeError:
            continue
    detected = _codec(detect_encoding(body))
    if detected is not None and detected not in tried:
        try:
            return body.decode(detected), detected
        except UnicodeDecodeError:
            pass
    best = tried[0]
    text = body.decode(best, errors="replace")
    if text.count("\ufffd") > MAX_REPLACED_SHARE * max(len(text), 1):
        return None, best
    return text, best


class ExtractionTimeout(BaseException):
    """Raised inside an extracting thread at its deadline; BaseException so libraries' `except Exception` cannot swallow it."""


def _interrupt(thread_id: int, exception: type[BaseException] | None) -> None:
    """Schedule `exception` in another thread at its next bytecode boundary (None cancels a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception else None)


class Watchdog:
    """One daemon thread per process that interrupts extractions still running at their deadline.

    Unlike SIGALRM it works in any thread (Dask runs tasks in worker threads); unlike a sandbox
    process it adds microseconds per page, not a round trip. It cannot stop a single long native
    call: the interrupt lands when that call returns, and the caller rejects whatever overran.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[int, float] = {}
        self._fired: set[int] = set()
        self.pid = os.getpid()
        threading.Thread(target=self._watch, name="gristmill-extract-watchdog", daemon=True).start()

    def arm(self, thread_id: int, deadline: float) -> None:
        with self._lock:
            self._deadlines[thread_id] = deadline

    def disarm(self, thread_id: int) -> None:
        """Forget the deadline and cancel an interrupt scheduled but not yet delivered."""
        with self._lock:
            self._deadlines.pop(thread_id, None)
            if thread_id in self._fired:
                self._fired.discard(thread_id)
                _interrupt(thread_id, None)

    def _watch(self) -> None:
        while True:
            time.sleep(WATCHDOG_POLL_S)
            now = time.monotonic()
            with self._lock:
                for thread_id, deadline in self._deadlines.items():
                    if now >= deadline:
                        _interrupt(thread_id, ExtractionTimeout)
                        self._fired.add(thread_id)
                        self._deadlines[thread_id] = now + WATCHDOG_REPEAT_S


_watchdog: Watchdog | None = None


def watchdog() -> Watchdog:
    """This process's watchdog, started on first use (and again in a forked child, where threads do not survive)."""
    global _watchdog
    if _watchdog is None or _watchdog.pid != os.getpid():
        _watchdog = Watchdog()
    return _watchdog


def div_nesting(html: str) -> int:
    """Deepest <div> nesting as written in the markup (an upper bound: a parser may close some early)."""
    if html.count("<div") + html.count("<DIV") <= MAX_DIV_NESTING:
        return 0  # cannot be deeper than the limit, and counting is far cheaper than scanning
    depth = deepest = 0
    for closing in DIV_TAG.findall(html):
        depth = max(depth - 1, 0) if closing else depth + 1
        deepest = max(deepest, depth)
    return deepest


def resiliparse_text(html: str) -> str:
    return extract_plain_text(HTMLTree.parse(html), main_content=True, alt_texts=False)


@functools.lru_cache(maxsize=1)
def _trafilatura_options():
    """Built once: trafilatura rebuilds its options from its config on every call otherwise (~0.4 ms a page)."""
    from trafilatura.settings import Extractor as Options

    return Options(precision=True, comments=False, dedup=False)


def trafilatura_text(html: str) -> str:
    """Trafilatura as FineWeb ran it, except `deduplicate`: its cache spans documents, so output would depend on order."""
    import trafilatura

    return trafilatura.extract(html, options=_trafilatura_options()) or ""


class HtmlExtractor:
    """Main-content text of one decoded page at a time, with a time limit per page."""

    def __init__(self, extractor: Extractor, timeout_s: float):
        self.extract_text: Callable[[str], str] = resiliparse_text if extractor == "resiliparse" else trafilatura_text
        self.guards_nesting = extractor == "resiliparse"
        self.timeout_s = timeout_s
        self.watchdog = watchdog()
        if extractor == "trafilatura":
            self.extract_text("<html><body><p>warm-up</p></body></html>")  # imports outside any time limit

    def extract(self, html: str) -> tuple[str | None, str | None, str | None]:
        """(text, None, None) or (None, reason, detail): too_deep, extraction_timeout or extraction_failed."""
        if self.guards_nesting and (nesting := div_nesting(html)) > MAX_DIV_NESTING:
            return None, "too_deep", f"<div> nesting {nesting} > {MAX_DIV_NESTING}"
        thread_id = threading.get_ident()
        started = time.monotonic()
        try:
            self.watchdog.arm(thread_id, started + self.timeout_s)
            try:
                text = self.extract_text(html)
            finally:
                self.watchdog.disarm(thread_id)
        except ExtractionTimeout:
            self.watchdog.disarm(thread_id)
            return None, "extraction_timeout", f"interrupted at the {self.timeout_s:g} s limit"
        except Exception as error:  # noqa: BLE001 - any library failure rejects this page only
            return None, "extraction_failed", f"{type(error).__name__}: {error}"[:300]
        elapsed = time.monotonic() - started
        if elapsed > self.timeout_s:
            return None, "extraction_timeout", f"took {elapsed:.2f} s > {self.timeout_s:g} s"
        return text, None, None
