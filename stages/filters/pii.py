"""`pii`: replace email addresses, public IP addresses and phone numbers in the text with placeholders.

Personal data should not be memorised by a model; documents are kept, and per-document counts say what was replaced.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register

EMAIL = r"[A-Za-z0-9._%+\-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\b"

# Phone numbers in the layouts below (RE2 syntax); see docs/LANGID_PII.md for what is and is not matched.
INTERNATIONAL_PHONE = (  # +44 20 7946 0958, +44 (0)20 7946 0958, +14155552671
    r"\+[1-9]\d{0,2}(?:[ \-]?\(0?\d{1,4}\)[ .\-]?\d{1,8}|[ \-]\d{1,8})(?:[ .\-]\d{2,8}){1,4}|\+[1-9]\d{7,14}"
)
NORTH_AMERICAN_PHONE = r"(?:1[ .\-]?)?(?:\([2-9]\d{2}\)[ .\-]?|[2-9]\d{2}[ .\-])[2-9]\d{2}[ .\-]\d{4}"  # (415) 555-2671
FRENCH_PHONE = r"0[1-9](?:[ .\-]\d{2}){4}"  # 01 23 45 67 89
TRUNK_PREFIX_PHONE = r"\(?0[1-9]\d{1,3}\)?[ /\-][1-9]\d{2,7}(?:[ \-]\d{2,4}){0,3}"  # 030 1234567, 020 7946 0958
# Group 1 is the character before the number (RE2 has no look-behind), which the replacement puts back.
PHONE = (
    rf"(^|[^\w+\-./])"
    rf"((?:{INTERNATIONAL_PHONE})|(?:{NORTH_AMERICAN_PHONE})|(?:{FRENCH_PHONE})|(?:{TRUNK_PREFIX_PHONE}))\b"
)

# Rows that may hold IP addresses are found with RE2; Python then keeps only global unicast addresses.
IP_CANDIDATE = (
    r"(?:^|[^\w.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?:[^\w.]|\.(?:\D|$)|$)"  # IPv4
    r"|(?:^|[^\w:.])"  # IPv6: a '::' next to a group, or eight groups
    r"(?:(?:[0-9A-Fa-f]{1,4}:){1,7}:|[0-9A-Fa-f]{0,4}::[0-9A-Fa-f]{1,4}|(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4})"
)
IP_ADDRESS = re.compile(
    r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)"  # IPv4
    r"|(?<![\w:.])"  # IPv6, checked by the ipaddress module afterwards
    r"(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,7}|::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?)(?![\w:])"
)
VERSION_NUMBER = re.compile(r"\d\.\d\.\d\.\d")
VERSION_BEFORE = re.compile(r"(?:\bv|\bversion\s?)$", re.IGNORECASE)

Kind = Literal["emails", "ips", "phones"]
COUNT_COLUMNS = {"emails": "pii_emails", "ips": "pii_ips", "phones": "pii_phones"}


class PiiConfig(StageConfig):
    redact: list[Kind] = Field(
        ["emails", "ips", "phones"],
        min_length=1,
        description="What to replace; the count columns of the others stay null.",
    )
    email_replacement: str = Field("<EMAIL>", description="Text that replaces each email address.")
    ip_replacement: str = Field("<IP>", description="Text that replaces each public IPv4 or IPv6 address.")
    phone_replacement: str = Field("<PHONE>", description="Text that replaces each phone number.")


def is_personal_address(candidate: str) -> bool:
    """Global unicast addresses only: private, reserved, loopback, documentation and multicast ones identify nobody.

    Four single digits (1.2.3.4) are read as a version number; the public resolvers they could
    also be (1.1.1.1, 8.8.8.8) are not personal either.
    """
    if VERSION_NUMBER.fullmatch(candidate):
        return False
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return address.is_global and not (address.is_multicast or address.is_reserved)


def redact_ips(text: str, replacement: str) -> tuple[str, int]:
    replaced = 0

    def replace(match: re.Match) -> str:
        nonlocal replaced
        start = match.start()
        if not is_personal_address(match.group()) or VERSION_BEFORE.search(text, max(0, start - 8), start):
            return match.group()
        replaced += 1
        return replacement

    return IP_ADDRESS.sub(replace, text), replaced


def rewrite_string(replacement: str) -> str:
    """A literal replacement for RE2, whose rewrite strings give backslashes a meaning."""
    return replacement.replace("\\", "\\\\")


def redact_where(
    texts: pa.Array, candidates: pa.Array, redact: Callable[[pa.Array], tuple[pa.Array, pa.Array]]
) -> tuple[pa.Array, pa.Array]:
    """Run `redact` on the candidate rows only and put its texts and counts back in place."""
    candidates = pc.fill_null(candidates, False)
    redacted, counts = redact(pc.filter(texts, candidates))
    zeros = pa.array(np.zeros(len(texts), np.int32))
    return (
        pc.replace_with_mask(texts, candidates, redacted),
        pc.replace_with_mask(zeros, candidates, counts.cast(pa.int32())),
    )


@register
class Pii(MapStage):
    """Replace emails, public IPs and phone numbers in `text`, counting them per document; rejects nothing."""

    name = "pii"
    Config = PiiConfig

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        for column in COUNT_COLUMNS.values():
            field = pa.field(column, pa.int32())
            index = input_schema.get_field_index(column)
            input_schema = input_schema.set(index, field) if index >= 0 else input_schema.append(field)
        return input_schema

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        config = self.config
        texts = batch.column("text")
        counts = {kind: pa.nulls(batch.num_rows, pa.int32()) for kind in COUNT_COLUMNS}
        # Emails first and phones last, so the digits of an address are never read as a phone number.
        if "emails" in config.redact:
            texts, counts["emails"] = redact_where(texts, pc.match_substring_regex(texts, EMAIL), self._redact_emails)
        if "ips" in config.redact:
            texts, counts["ips"] = redact_where(texts, pc.match_substring_regex(texts, IP_CANDIDATE), self._redact_ips)
        if "phones" in config.redact:
            texts, counts["phones"] = redact_where(texts, pc.match_substring_regex(texts, PHONE), self._redact_phones)

        annotated = batch.set_column(batch.schema.get_field_index("text"), "text", texts)
        for kind, column in COUNT_COLUMNS.items():
            index = annotated.schema.get_field_index(column)
            if index >= 0:
                annotated = annotated.set_column(index, column, counts[kind])
            else:
                annotated = annotated.append_column(column, counts[kind])
        return BatchResult.keep_all(annotated)

    def _redact_emails(self, texts: pa.Array) -> tuple[pa.Array, pa.Array]:
        counts = pc.count_substring_regex(texts, EMAIL)
        return pc.replace_substring_regex(texts, EMAIL, rewrite_string(self.config.email_replacement)), counts

    def _redact_ips(self, texts: pa.Array) -> tuple[pa.Array, pa.Array]:
        results = [redact_ips(text, self.config.ip_replacement) for text in texts.to_pylist()]
        redacted, counts = zip(*results) if results else ((), ())
        return pa.array(redacted, pa.string()), pa.array(counts, pa.int32())

    def _redact_phones(self, texts: pa.Array) -> tuple[pa.Array, pa.Array]:
        counts = pc.count_substring_regex(texts, PHONE)
        return pc.replace_substring_regex(texts, PHONE, r"\1" + rewrite_string(self.config.phone_replacement)), counts
