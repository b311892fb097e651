"""The pii stage: what is replaced, what is left alone, and that no document is ever dropped."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill.stages.filters.pii  # noqa: F401  (registers the stage)
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.pipeline.engine.executors import InProcessExecutor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.stages.filters.pii import Pii, PiiConfig
from tests.conftest import write_graph


def batch_of(texts: list[str | None]) -> pa.RecordBatch:
    rows = [{"id": f"d{index}", "text": text} for index, text in enumerate(texts)]
    return pa.RecordBatch.from_pylist(rows, schema=DOCUMENT_SCHEMA)


def redact(texts: list[str | None], **config) -> pa.RecordBatch:
    stage = Pii(PiiConfig(**config))
    stage.setup()
    result = stage.process(batch_of(texts))
    assert result.rejected.num_rows == 0
    assert result.kept.num_rows == len(texts)
    return result.kept


def redacted_texts(texts: list[str], **config) -> list[str]:
    return redact(texts, **config).column("text").to_pylist()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to jane.doe@example.com.", "Write to <EMAIL>."),
        ("<a href='mailto:j_smith+news@mail.uni-bonn.de'>", "<a href='mailto:<EMAIL>'>"),
        ("Contact: INFO@Example.CO.UK or sales@example.io", "Contact: <EMAIL> or <EMAIL>"),
        ("Follow @gristmill on social media", "Follow @gristmill on social media"),
        ("user@localhost is not an address", "user@localhost is not an address"),
        ("the price is 5 @ 3.99 each", "the price is 5 @ 3.99 each"),
    ],
)
def test_email_addresses(text: str, expected: str) -> None:
    assert redacted_texts([text], redact=["emails"]) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Connected from 93.184.216.34 at noon.", "Connected from <IP> at noon."),
        ("server 151.101.1.69:443", "server <IP>:443"),
        ("IPv6 2606:4700:4700::1111 answered", "IPv6 <IP> answered"),
        ("host 2a00:1450:4001:81b::200e.", "host <IP>."),
        # Not personal: private, loopback, link-local, shared, documentation, multicast, broadcast, unspecified.
        ("router 192.168.1.1, 10.0.0.7, 172.16.5.4, 127.0.0.1", "router 192.168.1.1, 10.0.0.7, 172.16.5.4, 127.0.0.1"),
        ("169.254.10.1 100.64.0.1 192.0.2.15 203.0.113.9", "169.254.10.1 100.64.0.1 192.0.2.15 203.0.113.9"),
        ("224.0.0.251 255.255.255.255 0.0.0.0", "224.0.0.251 255.255.255.255 0.0.0.0"),
        ("::1 fe80::1 2001:db8::8a2e:370:7334", "::1 fe80::1 2001:db8::8a2e:370:7334"),
        # Not addresses at all.
        ("999.10.10.10 and 108.0.0.01", "999.10.10.10 and 108.0.0.01"),
        ("at 10:30:45 the MAC 00:1A:2B:3C:4D:5E", "at 10:30:45 the MAC 00:1A:2B:3C:4D:5E"),
        ("std::vector and a[::2]", "std::vector and a[::2]"),
        # Version numbers: four single digits, or a 'v'/'version' in front.
        ("upgrade to 1.2.3.4 today", "upgrade to 1.2.3.4 today"),
        ("Release v2.10.3.1 and version 4.12.0.57", "Release v2.10.3.1 and version 4.12.0.57"),
        ("build 1.22.33.44.55 and 81.22.33.44.55", "build 1.22.33.44.55 and 81.22.33.44.55"),
        # A bare version that is also a valid public address cannot be told apart, and is replaced.
        ("upgrade to 4.12.0.57 today", "upgrade to <IP> today"),
    ],
)
def test_ip_addresses_only_public_ones(text: str, expected: str) -> None:
    assert redacted_texts([text], redact=["ips"]) == [expected]


PHONE_NUMBERS = [
    "+1 415 555 2671", "+1-415-555-2671", "(415) 555-2671", "415-555-2671", "415.555.2671", "1-800-555-0199",
    "+44 20 7946 0958", "+44 (0)20 7946 0958", "020 7946 0958", "(020) 7946 0958", "+49 30 1234567",
    "030 1234567", "0221/123456", "+49 (0)30 123 456 78", "0800 123 456", "01 23 45 67 89", "+33 1 23 45 67 89",
    "+86 138 0013 8000", "+7 495 123-45-67", "+14155552671",
]
NOT_PHONE_NUMBERS = [
    "2024-05-01", "12/05/2024", "05.01.2024", "01.02.2024 12:00", "05 2024", "10:30:45", "1,234,567", "3.14159",
    "$1,299.99", "€ 1 234 567,89", "2 000 000 people", "10 000 000", "in 1999 and 2004", "from 1998-2003 and 2005-2010",
    "pages 100-200", "score 3-1", "ISBN 978-3-16-148410-0", "ISBN 0-306-40615-2", "SSN 123-45-6789",
    "4111 1111 1111 1111", "1234567890", "zip 90210", "RFC 2616", "+5 points", "+3.5%", "+3.140000", "+100 200 meters",
    "version 10.0.19041.1", "01  012 0123    01234",
]


@pytest.mark.parametrize("number", PHONE_NUMBERS)
def test_phone_numbers_in_common_layouts(number: str) -> None:
    assert redacted_texts([f"Call {number} now."], redact=["phones"]) == ["Call <PHONE> now."]


@pytest.mark.parametrize("text", NOT_PHONE_NUMBERS)
def test_ordinary_numbers_and_dates_are_not_phone_numbers(text: str) -> None:
    assert redacted_texts([f"Call {text} now."], redact=["phones"]) == [f"Call {text} now."]


def test_counts_per_document_and_nothing_else_changes() -> None:
    texts = [
        "Mail a@b.org or c@d.net, call +1 415 555 2671; we log 93.184.216.34 and 192.168.0.1.",
        "Nothing personal: 2024-05-01, 3.14159 and 1.2.3.4.",
        None,
        "",
    ]
    kept = redact(texts)
    assert kept.column("text").to_pylist() == [
        "Mail <EMAIL> or <EMAIL>, call <PHONE>; we log <IP> and 192.168.0.1.",
        "Nothing personal: 2024-05-01, 3.14159 and 1.2.3.4.",
        None,
        "",
    ]
    assert kept.column("pii_emails").to_pylist() == [2, 0, 0, 0]
    assert kept.column("pii_ips").to_pylist() == [1, 0, 0, 0]
    assert kept.column("pii_phones").to_pylist() == [1, 0, 0, 0]
    assert kept.column("id").to_pylist() == ["d0", "d1", "d2", "d3"]


def test_kinds_not_redacted_are_left_in_the_text_and_their_counts_null() -> None:
    kept = redact(["a@b.org and +1 415 555 2671"], redact=["phones"])
    assert kept.column("text").to_pylist() == ["a@b.org and <PHONE>"]
    assert kept.column("pii_emails").to_pylist() == [None]
    assert kept.column("pii_phones").to_pylist() == [1]


def test_replacements_are_literal_text() -> None:
    texts = redacted_texts(
        ["x@y.com 93.184.216.34 (415) 555-2671"],
        email_replacement=r"email@example.com", ip_replacement=r"\1.\0", phone_replacement="$1 <tel>",
    )
    assert texts == [r"email@example.com \1.\0 $1 <tel>"]


def test_output_schema_matches_the_batches_and_a_second_run_replaces_its_columns() -> None:
    stage = Pii(PiiConfig())
    first = stage.process(batch_of(["a@b.org"])).kept
    assert first.schema.equals(stage.output_schema(DOCUMENT_SCHEMA))
    assert [first.schema.field(name).type for name in ("pii_emails", "pii_ips", "pii_phones")] == [pa.int32()] * 3
    second = stage.process(first).kept
    assert second.schema.equals(first.schema)
    assert second.column("pii_emails").to_pylist() == [0]
    assert stage.output_schema(first.schema).equals(first.schema)


pieces = st.sampled_from([
    "jane@example.com", "93.184.216.34", "2606:4700:4700::1111", "+44 20 7946 0958", "(415) 555-2671",
    "192.168.0.1", "2024-05-01", "1.2.3.4", "v2.10.3.1", "3.14", "x", "@", ".", ":", "-", "+", "0", "42", "\n",
])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(pieces, max_size=12).map(" ".join), max_size=10))
def test_rows_are_never_dropped_and_a_second_pass_finds_nothing(texts) -> None:
    stage = Pii(PiiConfig())
    once = stage.process(batch_of(texts))
    assert once.rejected.num_rows == 0 and once.kept.num_rows == len(texts)
    assert once.kept.column("id").to_pylist() == [f"d{index}" for index in range(len(texts))]
    twice = stage.process(once.kept).kept
    assert twice.column("text").to_pylist() == once.kept.column("text").to_pylist()
    for column in ("pii_emails", "pii_ips", "pii_phones"):
        assert set(twice.column(column).to_pylist()) <= {0}
    texts_out = once.kept.column("text").to_pylist()
    placeholders = sum(text.count("<EMAIL>") + text.count("<IP>") + text.count("<PHONE>") for text in texts_out)
    counted = sum(sum(once.kept.column(column).to_pylist()) for column in ("pii_emails", "pii_ips", "pii_phones"))
    assert placeholders == counted


def test_a_graph_run_keeps_every_document_and_adds_the_counts(tmp_path: Path, corpus: Path) -> None:
    extra = "  scrubbed:\n    stage: pii\n    input: long\n    params: {phone_replacement: '[phone]'}\n"
    graph = load_graph(write_graph(tmp_path / "g.yaml", corpus, extra), tmp_path / "run")
    run_graph(graph, InProcessExecutor())
    before = Dataset(tmp_path / "run" / "long").manifest()
    after = Dataset(tmp_path / "run" / "scrubbed").manifest()
    assert after.rows == before.rows and after.rejected == {}
    assert {"pii_emails": "int32", "pii_ips": "int32", "pii_phones": "int32"}.items() <= after.columns.items()
    table = pl.read_parquet(tmp_path / "run" / "scrubbed" / "*.parquet")
    assert table["pii_emails"].sum() == 0
