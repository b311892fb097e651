"""The bundled trainer: learning, exact resume, Dataset Decomposition batching and curricula, mixtures, proxy runs.

Fixtures write real exports: generated sentences, a byte-level BPE trained on them, and Megatron buckets of
2^k + 1 tokens with sidecars, as `gristmill export` lays them out.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.pipeline.tokens.indexed_dataset import IndexedDatasetWriter
from gristmill.pipeline.tokens.mixture import Mixture, compile_plan, write_plan
from gristmill.stages.tokens.tokenization import (
    DEFAULT_EOS,
    LoadedTokenizer,
    save_tokenizer,
    train_byte_level_bpe,
)
from gristmill.pipeline.cli.trainer import commands
from gristmill.trainer.data import (
    IGNORE,
    BestFitBatcher,
    ConcatChunkBatcher,
    DecomposedBatcher,
    Plan,
    curriculum_odds,
    held_out_windows,
    load_mixture_plan,
    shuffled_plan,
)
from gristmill.trainer.model import GPT, GPTConfig
from gristmill.trainer.config import TrainConfig
from gristmill.trainer.train import learning_rate, train

BUCKETS = (4, 5, 6, 7)  # 17 to 129 tokens per sequence
SUBJECTS = ["the miller", "a farmer", "the baker", "my neighbour", "the old horse", "a young girl"]
VERBS = ["grinds", "carries", "sells", "bakes", "loads", "counts", "wants"]
OBJECTS = ["the wheat", "fresh bread", "ten sacks", "the flour", "some barley", "a heavy stone"]
PLACES = ["at dawn", "by the river", "in the village", "before noon", "near the mill"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: faster than two on a busy 2-core machine, and bitwise reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sentences(rng: random.Random, count: int) -> str:
    return " ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}."
                    for _ in range(count))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> LoadedTokenizer:
    rng = random.Random(0)
    trained = train_byte_level_bpe([sentences(rng, 20) for _ in range(200)], vocab_size=300)
    return save_tokenizer(trained, tmp_path_factory.mktemp("tokenizer"), DEFAULT_EOS, {"test": True})


def decompose(tokens: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(k, piece) for the binary expansion of a document into pieces of 2^k + 1 tokens, k in BUCKETS."""
    pieces, start = [], 0
    for k in sorted(BUCKETS, reverse=True):
        while len(tokens) - start >= (1 << k) + 1:
            pieces.append((k, tokens[start:start + (1 << k) + 1]))
            start += 1 << k  # pieces overlap by one token: each token is a target once
    return pieces


def write_export(directory: Path, tokenizer: LoadedTokenizer, documents: list[np.ndarray]) -> Path:
    """One bucket-KK .bin/.idx, sidecar and sequence table per bucket, one sequence per document piece,
    laid out as `gristmill export` writes them (so `gristmill.pipeline.tokens.mixture` can compile plans over them)."""
    directory.mkdir(parents=True)
    writers = {k: IndexedDatasetWriter(directory / f"bucket-{k:02d}", np.uint16) for k in BUCKETS}
    for document in documents:
        for k, piece in decompose(document):
            writers[k].add_document([piece])
    for k, writer in writers.items():
        written = writer.finish()
        pq.write_table(pa.table({"num_tokens": pa.array(np.full(written.documents, (1 << k) + 1, np.int32)),
                                 "source": [directory.name] * written.documents}),
                       directory / f"bucket-{k:02d}.sequences.parquet")
        sidecar = {"prefix": f"bucket-{k:02d}", "bucket": k, "capacity": (1 << k) + 1, "mode": "decompose",
                   "tokens": written.tokens, "sequences": written.documents, "tokenizer": tokenizer.describe(),
                   "checksums": {"bin": written.bin_checksum, "idx": written.idx_checksum}}
        (directory / f"bucket-{k:02d}.json").write_text(json.dumps(sidecar))
    return directory


def clean_documents(tokenizer: LoadedTokenizer, seed: int, count: int) -> list[np.ndarray]:
    rng = random.Random(seed)
    texts = [sentences(rng, rng.choice([2, 4, 8, 16])) for _ in range(count)]
    return [np.asarray(encoding.ids + [tokenizer.eos_id]) for encoding in tokenizer.tokenizer.encode_batch(texts)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    clean = clean_documents(tokenizer, seed=1, count=600)
    rng = np.random.default_rng(2)
    shuffled = [rng.permutation(document) for document in clean]  # same tokens, no structure
    return {
        "clean": write_export(root / "clean", tokenizer, clean),
        "shuffled": write_export(root / "shuffled", tokenizer, shuffled),
        "heldout": write_export(root / "heldout", tokenizer, clean_documents(tokenizer, seed=3, count=60)),
    }


def quick_config(corpus: dict[str, Path], output: Path, **overrides) -> TrainConfig:
    settings = {"output": str(output), "data": [str(corpus["clean"])], "heldout": {"clean": str(corpus["heldout"])},
                "tokens_per_step": 512, "steps": 40, "warmup_steps": 5, "learning_rate": 3e-3, "cycles": 2,
                "seq_len": 128, "eval_tokens": 4096, "log_every": 1000}
    return TrainConfig(**(settings | overrides))


def test_loss_decreases_and_outputs_are_written(corpus, tmp_path):
    metrics = train(quick_config(corpus, tmp_path / "run", steps=40, eval_every=20))
    losses = [record["loss"] for record in metrics["history"]]
    assert len(losses) == 40
    assert math.log(300) - 0.5 < losses[0] < math.log(320) + 0.5  # starts near uniform over the vocabulary
    assert np.mean(losses[-10:]) < 0.5 * losses[0]
    assert all(record["rows"] * record["seq_len"] == 512 for record in metrics["history"])
    evaluations = metrics["evaluations"]
    assert [record["step"] for record in evaluations] == [20, 40]
    assert evaluations[1]["bits_per_byte"]["clean"] < evaluations[0]["bits_per_byte"]["clean"] < 8
    assert metrics["throughput"]["mfu"] is None and metrics["throughput"]["achieved_flops_per_device"] > 0
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["final_loss"] == losses[-1]
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("batching", ["dd", "best_fit"])
def test_resume_continues_the_loss_bitwise(corpus, tmp_path, batching):
    straight = train(quick_config(corpus, tmp_path / "straight", steps=16, batching=batching))

    def kill_after_step_10(record: dict) -> None:
        if record["step"] == 10:
            raise Interrupted

    config = quick_config(corpus, tmp_path / "killed", steps=16, batching=batching, checkpoint_every=5)
    with pytest.raises(Interrupted):
        train(config, kill_after_step_10)
    checkpoint = torch.load(tmp_path / "killed" / "checkpoint.pt")
    assert checkpoint["step"] == 10 and checkpoint["data_position"]
    resumed = train(config)
    assert [record["loss"] for record in resumed["history"]] == [record["loss"] for record in straight["history"]]
    assert resumed["final_bits_per_byte"] == straight["final_bits_per_byte"]
    with pytest.raises(ValueError, match="different learning_rate"):
        train(quick_config(corpus, tmp_path / "killed", steps=16, batching=batching, learning_rate=1e-2))


def test_decomposed_batches_keep_tokens_per_step_and_read_each_bucket_once_per_cycle(corpus):
    plan = shuffled_plan([str(corpus["clean"])], seed=0)
    batcher = DecomposedBatcher(plan, tokens_per_step=512, curriculum="grow_p2", cycles=2, seed=0)
    assert batcher.bucket_lengths.tolist() == [16, 32, 64, 128]
    assert batcher.rows.tolist() == [32, 16, 8, 4]
    per_cycle = int(batcher.batches_per_cycle.sum())
    seen = {length: 0 for length in batcher.bucket_lengths.tolist()}
    for _ in range(2 * per_cycle):  # both cycles: one pass over the data
        batch = batcher.next_batch()
        rows, seq_len = batch.inputs.shape
        assert rows * seq_len == 512 and batch.document_ids is None
        assert np.array_equal(batch.inputs[:, 1:], batch.targets[:, :-1])
        seen[seq_len] += rows
    queues = {int(length): len(queue) for length, queue in zip(batcher.bucket_lengths, batcher.queues)}
    for length, rows in seen.items():  # every sequence once, plus at most one wrapped-around batch per cycle
        assert queues[length] <= rows < queues[length] + 2 * 512 // length


def test_packed_bucket_sequences_are_padded_and_masked(tmp_path):
    """`decompose --remainders pack` writes bucket sequences of several segments, shorter than the capacity."""
    with IndexedDatasetWriter(tmp_path / "bucket-04", np.uint16) as writer:
        writer.add_document([np.arange(100, 117)])  # one full sequence of 17 tokens
        writer.add_document([np.arange(200, 206), np.arange(300, 309)])  # two remainders: 6 + 9 tokens
        writer.finish()
    (tmp_path / "bucket-04.json").write_text(json.dumps({"prefix": "bucket-04", "capacity": 17}))
    plan = shuffled_plan([str(tmp_path / "bucket-04")], seed=0)
    batcher = DecomposedBatcher(plan, tokens_per_step=32, curriculum="uniform", cycles=1, seed=0)
    batch = batcher.next_batch()
    assert batch.inputs.shape == (2, 16)
    packed = int(np.flatnonzero(batch.inputs[:, 0] == 200)[0])
    assert batch.inputs[packed].tolist() == [*range(200, 206), *range(300, 309), 0]
    assert batch.targets[packed].tolist() == [*range(201, 206), IGNORE, *range(301, 309), IGNORE, IGNORE]
    assert batch.document_ids[packed, :15].tolist() == [0] * 6 + [1] * 9 and batch.document_ids[packed, 15] < 0
    assert batch.targets[1 - packed].tolist() == list(range(101, 117))
    assert batch.component_tokens.tolist() == [16 + 5 + 8]


def test_curricula_follow_their_odds():
    assert curriculum_odds("uniform", 4).tolist() == [1, 1, 1, 1]
    assert curriculum_odds("grow_linear", 4).tolist() == [4, 3, 2, 1]
    assert curriculum_odds("grow_p2", 4).tolist() == [8, 4, 2, 1]
    plan = synthetic_bucket_plan({16: 400, 32: 200, 64: 100, 128: 50})
    for curriculum in ("uniform", "grow_linear", "grow_p2"):
        batcher = DecomposedBatcher(plan, tokens_per_step=128, curriculum=curriculum, cycles=1, seed=0)
        remaining = batcher.batches_per_cycle  # [50, 50, 50, 50] batches
        expected = batcher.odds * remaining / (batcher.odds * remaining).sum()
        draws = 2000
        first = np.array([batcher.cycle_schedule(cycle)[0][0] for cycle in range(draws)])
        observed = np.bincount(first, minlength=4) / draws
        tolerance = 4 * np.sqrt(expected * (1 - expected) / draws)
        assert np.all(np.abs(observed - expected) <= tolerance), (curriculum, observed, expected)
        schedule, _ = batcher.cycle_schedule(0)
        assert np.bincount(schedule).tolist() == remaining.tolist()
        lengths = batcher.bucket_lengths[schedule]
        early, late = lengths[: len(lengths) // 4].mean(), lengths[-len(lengths) // 4:].mean()
        if curriculum == "uniform":
            assert abs(early - late) < 25
        else:
            assert late > 1.5 * early  # sequences grow through the cycle


class MemoryFile:
    """An in-memory stand-in for an indexed dataset: one single-segment document per length."""

    def __init__(self, lengths: list[int], name: str) -> None:
        self.prefix = f"memory-{name}"  # no sidecar, so a DD bucket's capacity is its longest sequence
        self.sequence_lengths = np.asarray(lengths, np.int32)
        self.document_indices = np.arange(len(lengths) + 1)
        self.num_documents = len(lengths)
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        self.tokens = np.arange(self.starts[-1]) % 1000

    def document(self, index: int) -> np.ndarray:
        return self.tokens[self.starts[index]:self.starts[index + 1]]

    def document_sequence_lengths(self, index: int) -> np.ndarray:
        return self.sequence_lengths[index:index + 1]


def memory_plan(files: list[MemoryFile]) -> Plan:
    file = np.concatenate([np.full(item.num_documents, index) for index, item in enumerate(files)])
    sequence = np.concatenate([np.arange(item.num_documents) for item in files])
    return Plan(["memory"], files, np.zeros(len(file), np.int64), file, sequence, {"vocab_size": 1000})


def synthetic_bucket_plan(sequences_per_length: dict[int, int]) -> Plan:
    """A plan over in-memory buckets of 2^k + 1 tokens, for batcher tests that need no files."""
    return memory_plan([MemoryFile([length + 1] * count, str(length)) for length, count in sequences_per_length.items()])


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=40), seq_len=st.integers(4, 128))
def test_best_fit_pieces_fit_their_rows_and_predict_every_token_once(lengths, seq_len):
    plan = memory_plan([MemoryFile(lengths, "docs")])
    if max(lengths) < 2:
        with pytest.raises(ValueError, match="nothing to predict"):
            BestFitBatcher(plan, seq_len, seq_len, seed=0)
        return
    bins = BestFitBatcher(plan, seq_len, seq_len, seed=0).pack_window(0)
    predicted = np.zeros(len(lengths), np.int64)
    for pieces in bins:
        assert sum(stop - start for _, start, stop in pieces) <= seq_len + 1
        for entry, start, stop in pieces:
            assert 0 <= start < stop <= lengths[entry]
            predicted[entry] += stop - start - 1
    assert predicted.tolist() == [max(length - 1, 0) for length in lengths]


def test_realised_mixture_shares_match_the_plan(corpus, tmp_path):
    mixture = Mixture(data=[str(corpus["clean"]), str(corpus["shuffled"])], seed=7, components={
        "clean": {"source": "clean", "tokens": 30_000}, "noisy": {"source": "shuffled", "tokens": 10_000}})
    header, rows = compile_plan(mixture, tmp_path)
    plan = load_mixture_plan(write_plan(header, rows, tmp_path / "plan").parent)
    assert plan.names == ["clean", "noisy"]
    assert plan.token_shares() == pytest.approx([0.75, 0.25], abs=0.01)
    for batcher in (DecomposedBatcher(plan, 512, "grow_p2", cycles=1, seed=0), ConcatChunkBatcher(plan, 128, 512)):
        realised = np.zeros(2)
        for _ in range(60):
            realised += batcher.next_batch().component_tokens
        assert realised.sum() == 60 * 512
        assert realised / realised.sum() == pytest.approx(plan.token_shares(), abs=0.04)
        state = batcher.state_dict()
        following = batcher.next_batch()
        batcher.load_state_dict(state)
        assert np.array_equal(batcher.next_batch().inputs, following.inputs)


def test_best_fit_packs_whole_documents_and_masks_between_them():
    plan = synthetic_bucket_plan({16: 30, 32: 20, 64: 10})
    batcher = BestFitBatcher(plan, seq_len=100, tokens_per_step=400, seed=0, window_entries=60)
    assert batcher.rows == 4
    bins = batcher.pack_window(0)
    assert all(sum(stop - start for _, start, stop in pieces) <= 101 for pieces in bins)
    assert sorted(entry for pieces in bins for entry, _, _ in pieces) == list(range(60))  # each sequence once
    predicted, padding = 0, 0
    for _ in range(math.ceil(len(bins) / 4)):
        batch = batcher.next_batch()
        documents = batch.document_ids
        first_of_document = np.diff(documents, axis=1, prepend=-999) != 0
        # A document's first token is never a target, and no token attends outside its own document.
        assert np.all(batch.targets[:, :-1][first_of_document[:, 1:]] == IGNORE)
        predicted += int((batch.targets != IGNORE).sum())
        padding += int((documents < 0).sum())
    assert predicted >= 30 * 16 + 20 * 32 + 10 * 64  # every token but each sequence's first, in the first window
    assert padding > 0


def test_concat_chunk_windows_follow_the_token_stream():
    plan = synthetic_bucket_plan({16: 4})
    batcher = ConcatChunkBatcher(plan, seq_len=10, tokens_per_step=20)
    stream = np.concatenate([plan.tokens(entry) for entry in range(len(plan))])
    first, second = batcher.next_batch(), batcher.next_batch()
    assert first.inputs.tolist() == [stream[0:10].tolist(), stream[10:20].tolist()]
    assert first.targets[0].tolist() == stream[1:11].tolist()
    assert second.inputs[0].tolist() == stream[20:30].tolist()


def test_held_out_bytes_are_those_of_the_predicted_text(tmp_path, tokenizer):
    texts = ["the miller grinds the wheat by the river.", "a farmer sells fresh bread at dawn."]
    documents = [np.asarray(encoding.ids + [tokenizer.eos_id]) for encoding in tokenizer.tokenizer.encode_batch(texts)]
    directory = tmp_path / "tiny"
    directory.mkdir()
    with IndexedDatasetWriter(directory / "bucket-05", np.uint16) as writer:
        for document in documents:
            writer.add_document([document])
        writer.finish()
    (directory / "bucket-05.json").write_text(json.dumps({"prefix": "bucket-05", "tokenizer": tokenizer.describe()}))
    windows = held_out_windows(directory, seq_len=8, max_tokens=1000)
    first_token_bytes = sum(len(tokenizer.decode(document[:1]).encode()) for document in documents)
    assert windows.predicted_bytes == sum(len(text.encode()) for text in texts) - first_token_bytes
    targets = windows.targets[windows.targets != IGNORE]
    assert len(targets) == sum(len(document) - 1 for document in documents)


def test_document_mask_isolates_packed_documents():
    torch.manual_seed(0)
    model = GPT(GPTConfig.named("tiny", vocab_size=50, max_seq_len=16)).eval()
    first, second = torch.randint(0, 50, (1, 6)), torch.randint(0, 50, (1, 10))
    packed = model(torch.cat([first, second], dim=1), torch.tensor([[0] * 6 + [1] * 10]))
    alone = model(second)
    # RoPE is relative, so the second document reads the same at offset 6 as at 0.
    assert torch.allclose(packed[0, 6:], alone[0], atol=1e-5)
    unmasked = model(torch.cat([first, second], dim=1))
    assert not torch.allclose(unmasked[0, 6:], alone[0], atol=1e-3)
    assert torch.allclose(unmasked[0, :6], model(first)[0], atol=1e-5)  # causal: the past ignores the future


def test_learning_rate_schedules():
    cosine = TrainConfig(output="x", data=["x"], learning_rate=1.0, min_lr_ratio=0.1, warmup_steps=10, steps=110)
    assert learning_rate(cosine, 0) == pytest.approx(0.1)
    assert learning_rate(cosine, 9) == pytest.approx(1.0)
    assert learning_rate(cosine, 60) == pytest.approx(0.55)  # halfway down the cosine
    assert learning_rate(cosine, 110) == pytest.approx(0.1)
    wsd = cosine.model_copy(update={"schedule": "wsd", "decay_fraction": 0.2})
    assert learning_rate(wsd, 50) == learning_rate(wsd, 87) == 1.0
    assert learning_rate(wsd, 109) == pytest.approx(0.1)


def test_proxy_ranks_structured_text_above_its_shuffled_tokens(corpus, tmp_path):
    cli = {command.name: command for command in commands}
    result = CliRunner().invoke(cli["proxy"], [
        "--candidate", f"shuffled={corpus['shuffled']}", "--candidate", f"clean={corpus['clean']}",
        "--heldout", f"clean={corpus['heldout']}", "--tokens", str(20 * 512), "--seed", "0", "--seed", "1",
        "--output", str(tmp_path / "proxy"), "--tokens-per-step", "512", "--warmup-steps", "3",
        "--learning-rate", "1e-2", "--eval-tokens", "4096", "--cycles", "2",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "proxy" / "proxy.json").read_text())
    assert report["ranking"] == ["clean", "shuffled"] and report["winner"] == "clean"
    assert report["steps"] == 20 and report["separated_across_seeds"]
    assert report["margin_bits_per_byte"] > 0.2
    assert report["candidates"]["clean"]["mean_spread"] > 0  # two seeds, two different runs
    assert "winner: clean" in result.output


def test_train_command_reports_bad_settings_in_one_line(corpus, tmp_path):
    cli = {command.name: command for command in commands}
    neither = CliRunner().invoke(cli["train"], ["--output", str(tmp_path / "a")])
    assert neither.exit_code == 2 and "give either --data prefixes or a --plan" in neither.output
    uneven = CliRunner().invoke(cli["train"], ["--output", str(tmp_path / "b"), "--data", str(corpus["clean"]),
                                               "--tokens-per-step", "100"])
    assert uneven.exit_code == 2
    assert "tokens_per_step 100 is not a multiple of the longest bucket, 128 tokens" in uneven.output


def test_train_command_trains_every_model_size_by_name(corpus, tmp_path):
    """`--model` is a config field; the command once passed it twice and crashed with a TypeError for any size."""
    cli = {command.name: command for command in commands}
    result = CliRunner().invoke(cli["train"], [
        "--model", "20M", "--data", str(corpus["clean"]), "--output", str(tmp_path / "run"), "--steps", "1",
        "--tokens-per-step", "512", "--warmup-steps", "0", "--eval-tokens", "256",
    ])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["model"] == "20M" and len(metrics["history"]) == 1
    unknown = CliRunner().invoke(cli["train"], ["--model", "7B", "--data", str(corpus["clean"]),
                                                "--output", str(tmp_path / "other")])
    assert unknown.exit_code == 2 and "unknown model '7B'" in unknown.output


def test_train_command_refuses_a_vocabulary_smaller_than_the_data_in_one_line(corpus, tmp_path):
    cli = {command.name: command for command in commands}
    largest = max(int(np.fromfile(path, np.uint16).max()) for path in corpus["clean"].glob("*.bin"))
    assert largest >= 100
    result = CliRunner().invoke(cli["train"], ["--vocab-size", "100", "--data", str(corpus["clean"]),
                                               "--output", str(tmp_path / "run"), "--tokens-per-step", "512"])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: --vocab-size 100 is too small for the data: its largest token id is "
                                     f"{largest}; give at least {largest + 1} or leave it out")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_one_protocol_under_every_proxy_command(corpus, tokenizer, tmp_path, monkeypatch):
    """`proxy`, `classifier select-seeds` and `sweep` all train through trainer.protocol.run_one, which writes a
    result.json in every run directory."""
    from gristmill.classifiers.seed_selection import SeedCandidate, TrainerProxyRunner, select_seed_set
    from gristmill.trainer import protocol
    from gristmill.trainer.sweep import SweepConfig, run_sweep

    trained = []

    def recorded(run: protocol.ProxyRun) -> dict:
        trained.append(Path(run.config.output))
        return real_run_one(run)

    real_run_one = protocol.run_one
    monkeypatch.setattr(protocol, "run_one", recorded)
    training = {"tokens_per_step": 512, "warmup_steps": 1, "eval_tokens": 1024, "log_every": 1000}
    budget = ["--tokens-per-step", "512", "--warmup-steps", "1", "--eval-tokens", "1024"]

    cli = {command.name: command for command in commands}
    result = CliRunner().invoke(cli["proxy"], [
        "--candidate", f"shuffled={corpus['shuffled']}", "--candidate", f"clean={corpus['clean']}",
        "--heldout", f"clean={corpus['heldout']}", "--tokens", str(3 * 512), "--output", str(tmp_path / "proxy"),
        *budget])
    assert result.exit_code == 0, result.output
    assert "margin_interval" in json.loads((tmp_path / "proxy" / "proxy.json").read_text())
    proxy_runs = {tmp_path / "proxy" / name / "seed-0" for name in ("clean", "shuffled")}

    rng = random.Random(7)
    for name in ("plain", "other", "heldout"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": sentences(rng, 8)}) + "\n"
                                                        for _ in range(40)))
    runner = TrainerProxyRunner(tokenizer=tokenizer.path, heldout={"h": (str(tmp_path / "heldout.jsonl"),)},
                                tokens=3 * 512, work_dir=tmp_path / "seeds", training=training | {"seq_len": 64})
    selection = select_seed_set([SeedCandidate(name, (str(tmp_path / f"{name}.jsonl"),)) for name in ("plain", "other")],
                                runner)
    assert all(outcome.value is not None for outcome in selection.outcomes), selection.outcomes
    heldout_sidecar = json.loads((tmp_path / "seeds" / "tokens" / "heldout-h" / "documents.json").read_text())
    assert heldout_sidecar["mode"] == "documents" and heldout_sidecar["sequences"] == 40  # one row per document
    seed_runs = {tmp_path / "seeds" / "runs" / name / "seed-0" for name in ("plain", "other")}

    sweep = SweepConfig(mixtures=3, data=[str(corpus["clean"]), str(corpus["shuffled"])], tokens=3 * 512,
                        components={"clean": {"source": "clean"}, "shuffled": {"source": "shuffled"}},
                        heldout={"clean": str(corpus["heldout"])}, training=training)
    summary = run_sweep(sweep, tmp_path / "sweep")
    assert len(summary["runs"]) == 3
    sweep_runs = {tmp_path / "sweep" / "runs" / f"mix-{index:03d}" / "seed-0" for index in range(3)}

    assert sorted(trained) == sorted(proxy_runs | seed_runs | sweep_runs)
    for directory in trained:
        result = json.loads((directory / "result.json").read_text())
        assert result["steps"] == 3 and result["tokens_trained"] == 3 * 512
        assert set(result["bits_per_byte"]) in ({"clean"}, {"h"})


def test_compare_gives_the_paired_difference_its_interval_and_whether_seeds_separate():
    from gristmill.trainer.protocol import compare

    this = {0: 1.00, 1: 1.10, 2: 0.95, 3: 1.05}
    apart = {0: 1.30, 1: 1.45, 2: 1.20, 3: 1.40}  # every seed worse than every seed of `this`
    overlapping = {0: 1.20, 1: 0.90, 2: 1.15, 3: 1.00}
    for that, separated in ((apart, True), (overlapping, False)):
        result = compare(this, that)
        mean = float(np.mean([this[seed] - that[seed] for seed in this]))
        low, high = result["interval"]
        assert result["delta"] == pytest.approx(mean) and low <= mean <= high and low < high
        assert result["separated"] is separated and result["seeds"] == 4
    assert compare(this, apart)["interval"][1] < 0  # each seed's difference is negative, so is every resampled mean
    with pytest.raises(ValueError, match="share no seed"):
        compare({0: 1.0}, {1: 1.0})
