"""The Megatron indexed-dataset format: golden bytes from the spec, round trips, damage detection, Megatron itself."""

from __future__ import annotations

import importlib.util
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.pipeline.tokens.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    token_dtype,
)


def expected_index(code: int, lengths: list[int], itemsize: int, document_index: list[int]) -> bytes:
    """The .idx bytes written out field by field from the format description, independently of the writer."""
    pointers = np.concatenate([[0], np.cumsum(lengths)[:-1]]) * itemsize
    return (
        b"MMIDIDX\x00\x00"
        + struct.pack("<Q", 1)
        + struct.pack("<B", code)
        + struct.pack("<Q", len(lengths))
        + struct.pack("<Q", len(document_index))
        + struct.pack(f"<{len(lengths)}i", *lengths)
        + struct.pack(f"<{len(lengths)}q", *pointers.tolist())
        + struct.pack(f"<{len(document_index)}q", *document_index)
    )


def test_writer_matches_golden_bytes_for_uint16(tmp_path: Path) -> None:
    # Two documents: the first of sequences [5, 6, 7] and [65535], the second of [0, 1].
    with IndexedDatasetWriter(tmp_path / "golden", np.uint16) as writer:
        writer.add_document([np.array([5, 6, 7]), np.array([65535])])
        writer.add_document([np.array([0, 1])])
        written = writer.finish()
    assert (tmp_path / "golden.bin").read_bytes() == struct.pack("<6H", 5, 6, 7, 65535, 0, 1)
    assert (tmp_path / "golden.idx").read_bytes() == expected_index(8, [3, 1, 2], 2, [0, 2, 3])
    assert (written.sequences, written.documents, written.tokens, written.dtype) == (3, 2, 6, "uint16")


def test_writer_matches_golden_bytes_for_int32_batches(tmp_path: Path) -> None:
    with IndexedDatasetWriter(tmp_path / "golden", np.int32) as writer:
        writer.add_batch(np.array([70_000, 1, 2, 3]), np.array([1, 3]), np.array([1, 1]))
        writer.finish()
    assert (tmp_path / "golden.bin").read_bytes() == struct.pack("<4i", 70_000, 1, 2, 3)
    assert (tmp_path / "golden.idx").read_bytes() == expected_index(4, [1, 3], 4, [0, 1, 2])


def test_token_dtype_is_uint16_exactly_while_ids_fit() -> None:
    assert token_dtype(50_257) is np.uint16
    assert token_dtype(65_536) is np.uint16
    assert token_dtype(65_537) is np.int32
    assert token_dtype(128_256) is np.int32


documents_strategy = st.lists(
    st.lists(st.lists(st.integers(0, 65_535), max_size=12), max_size=4), max_size=12
)


@settings(max_examples=40, deadline=None)
@given(documents=documents_strategy)
def test_reader_returns_what_was_written(tmp_path_factory, documents) -> None:
    prefix = tmp_path_factory.mktemp("roundtrip") / "data"
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for sequences in documents:
            writer.add_document([np.array(sequence, dtype=np.int64) for sequence in sequences])
        writer.finish()
    dataset = IndexedDataset(prefix)
    flat = [sequence for sequences in documents for sequence in sequences]
    assert len(dataset) == len(flat) and dataset.num_documents == len(documents)
    assert [dataset[i].tolist() for i in range(len(dataset))] == flat
    for index, sequences in enumerate(documents):
        assert dataset.document(index).tolist() == [token for sequence in sequences for token in sequence]
        assert dataset.document_sequence_lengths(index).tolist() == [len(sequence) for sequence in sequences]
    assert dataset.num_tokens == sum(map(len, flat))
    assert dataset.problems() == []


def test_sequences_are_views_into_the_memory_map(tmp_path: Path) -> None:
    with IndexedDatasetWriter(tmp_path / "d", np.uint16) as writer:
        writer.add_document([np.arange(10)])
        writer.finish()
    sequence = IndexedDataset(tmp_path / "d")[0]
    assert isinstance(sequence.base, np.memmap) or isinstance(sequence, np.memmap)
    assert not sequence.flags.writeable
    with pytest.raises(IndexError):
        IndexedDataset(tmp_path / "d")[1]


def test_writer_refuses_ids_outside_the_dtype_and_inconsistent_counts(tmp_path: Path) -> None:
    writer = IndexedDatasetWriter(tmp_path / "d", np.uint16)
    with pytest.raises(ValueError, match="outside the range of uint16"):
        writer.add_document([np.array([65_536])])
    with pytest.raises(ValueError, match="add up"):
        writer.add_batch(np.array([1, 2]), np.array([3]), np.array([1]))
    writer.abort()


def test_an_aborted_writer_leaves_no_files(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), IndexedDatasetWriter(tmp_path / "d", np.uint16) as writer:
        writer.add_document([np.arange(5)])
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def write_small(prefix: Path) -> None:
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_document([np.arange(4), np.arange(3)])
        writer.add_document([np.arange(5)])
        writer.finish()


def test_damaged_files_are_named_not_crashed_on(tmp_path: Path) -> None:
    write_small(tmp_path / "d")
    index = (tmp_path / "d.idx").read_bytes()
    (tmp_path / "d.idx").write_bytes(b"NOTMEGA" + index[7:])
    with pytest.raises(IndexedDatasetError, match=r"d\.idx: not a Megatron index"):
        IndexedDataset(tmp_path / "d")
    (tmp_path / "d.idx").write_bytes(index[:-8])
    with pytest.raises(IndexedDatasetError, match="header implies"):
        IndexedDataset(tmp_path / "d")
    (tmp_path / "d.idx").write_bytes(index)
    (tmp_path / "d.bin").write_bytes((tmp_path / "d.bin").read_bytes()[:-2])
    assert IndexedDataset(tmp_path / "d").problems() == ["index covers 12 tokens, d.bin holds 11"]
    with pytest.raises(IndexedDatasetError, match="missing"):
        IndexedDataset(tmp_path / "absent")


def test_problems_catch_an_index_whose_pointers_were_altered(tmp_path: Path) -> None:
    write_small(tmp_path / "d")
    index = bytearray((tmp_path / "d.idx").read_bytes())
    pointer_offset = 34 + 3 * 4 + 8  # header, three lengths, then the second pointer
    index[pointer_offset:pointer_offset + 8] = struct.pack("<q", 2)
    (tmp_path / "d.idx").write_bytes(bytes(index))
    assert "sequence pointers are not the running sum of the lengths" in IndexedDataset(tmp_path / "d").problems()


megatron_missing = importlib.util.find_spec("megatron") is None


@pytest.mark.slow
@pytest.mark.skipif(megatron_missing, reason="megatron-core is not installed")
def test_megatron_reads_our_files_and_we_read_megatrons(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        from megatron.core.datasets.indexed_dataset import (
            IndexedDataset as MegatronDataset,
        )
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    documents = [[rng.integers(0, 50_000, rng.integers(1, 40)) for _ in range(rng.integers(1, 4))] for _ in range(30)]
    with IndexedDatasetWriter(tmp_path / "ours", np.uint16) as writer:
        for sequences in documents:
            writer.add_document(sequences)
        writer.finish()
    theirs = MegatronDataset(str(tmp_path / "ours"))
    ours = IndexedDataset(tmp_path / "ours")
    assert len(theirs) == len(ours) and np.array_equal(theirs.document_indices, ours.document_indices)
    for index in range(len(ours)):
        assert np.array_equal(theirs[index], ours[index])

    builder = IndexedDatasetBuilder(str(tmp_path / "megatron.bin"), dtype=np.uint16)
    for sequences in documents:
        for sequence in sequences:
            builder.add_item(torch.from_numpy(sequence.astype(np.int64)))
        builder.end_document()
    builder.finalize(str(tmp_path / "megatron.idx"))
    assert (tmp_path / "megatron.bin").read_bytes() == (tmp_path / "ours.bin").read_bytes()
    assert (tmp_path / "megatron.idx").read_bytes() == (tmp_path / "ours.idx").read_bytes()
