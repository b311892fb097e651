"""The texts every tokenizer is measured on: a seeded sample of a Gristmill dataset, with each document's language and domain.

Only the `id`, `text`, `lang` and domain columns are read, and reading stops at the sample size, so memory is bounded by
the sample. All tokenizers see the same documents, so their numbers are comparable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from gristmill.pipeline.engine.dataset import COMPRESSION, COMPRESSION_LEVEL, Dataset, DatasetError
from gristmill.tokenizer_eval.words import word_spans

UNKNOWN = "unknown"
OTHER = "(other)"
SAMPLE_FILE = "sample.parquet"
# Salted apart from `gristmill tokenizer train`'s sample, so a trained tokenizer is not measured on exactly
# the documents it was trained on (unless the sample is most of the dataset).
SAMPLE_SALT = "tokenizer-eval"


@dataclass
class CorpusSample:
    """Sampled documents with their language and domain groups and their words (computed once for all tokenizers)."""

    texts: list[str]
    languages: list[str]
    domains: list[str]
    domain_column: str | None
    documents_read: int
    words: list[np.ndarray] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    document_bytes: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.words:
            self.words = [word_spans(text) for text in self.texts]
        self.document_bytes = [len(text.encode()) for text in self.texts]

    @property
    def bytes(self) -> int:
        return sum(self.document_bytes)

    def group_bytes(self, column: str) -> dict[str, int]:
        """UTF-8 bytes per group of `column` ("languages" or "domains"), largest first, ties by name.

        Bytes, not characters: by characters a Han-script language weighs a third of what its text does.
        The order never depends on the order of documents, so the groups shown are the same for any sample order.
        """
        sizes: Counter[str] = Counter()
        for value, size in zip(getattr(self, column), self.document_bytes):
            sizes[value] += size
        return dict(sorted(sizes.items(), key=lambda item: (-item[1], item[0])))

    def groups(self, column: str, max_groups: int) -> list[str]:
        """Each document's group in `column`: one of the `max_groups` largest by bytes, else OTHER."""
        kept = set(list(self.group_bytes(column))[:max_groups])
        return [value if value in kept else OTHER for value in getattr(self, column)]

    def folded(self, column: str, max_groups: int) -> dict[str, int]:
        """The groups shown as OTHER, with their bytes, largest first."""
        return dict(list(self.group_bytes(column).items())[max_groups:])

    def write_parquet(self, path: Path) -> None:
        """The measured documents (id, language, domain, text), so the numbers can be checked and reproduced."""
        table = pa.table({"id": pa.array(self.ids, pa.string()), "lang": self.languages, "domain": self.domains,
                          "text": self.texts})
        pq.write_table(table, path, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL)


def sample_dataset(path: str | Path, max_bytes: int, seed: int = 0, domain_column: str | None = None) -> CorpusSample:
    """Documents whose seeded id hash falls under the fraction that gives `max_bytes`, in dataset order, up to max_bytes.

    The domain column is `domain_column`, else `domain`, else `source`, whichever the dataset has.
    """
    dataset = Dataset(path)
    schema = dataset.schema()
    if "text" not in schema.names:
        raise DatasetError(f"{dataset.path}: has no text column")
    if domain_column is None:
        domain_column = next((name for name in ("domain", "source") if name in schema.names), None)
    elif domain_column not in schema.names:
        raise DatasetError(f"{dataset.path}: has no column {domain_column!r}")
    columns = ["id", "text"] + [name for name in ("lang", domain_column) if name and name in schema.names]
    total = sum(record.text_bytes_out for record in dataset.manifest().shards) or 1
    threshold = min(max_bytes / total * 1.1, 1.0) * 2**64
    ids: list[str] = []
    texts: list[str] = []
    languages: list[str] = []
    domains: list[str] = []
    size = read = 0
    for batch in dataset.iter_batches(columns=columns):
        rows = batch.to_pydict()
        missing = [None] * batch.num_rows
        for document_id, text, language, domain in zip(rows["id"], rows["text"], rows.get("lang", missing),
                                                        rows.get(domain_column, missing)):
            read += 1
            key = xxhash.xxh3_64_intdigest(f"{SAMPLE_SALT}\x1f{seed}\x1f{document_id}".encode())
            if not text or key >= threshold:
                continue
            ids.append(document_id)
            texts.append(text)
            languages.append(language or UNKNOWN)
            domains.append(domain or UNKNOWN)
            size += len(text.encode())
            if size >= max_bytes:
                return CorpusSample(texts, languages, domains, domain_column, read, ids=ids)
    return CorpusSample(texts, languages, domains, domain_column, read, ids=ids)
