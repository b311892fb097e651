"""Settings of a training run, importable without torch so the CLI starts fast.

A proxy comparison's settings (`ProxyProtocol`, `PER_RUN`) are in trainer/protocol.py, which builds on these.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# name: (layers, heads, width). Parameter counts in docs/TRAINER.md assume tied embeddings and a 50,304 vocabulary.
MODEL_SHAPES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 2, 64),
    "20M": (8, 4, 256),
    "60M": (12, 8, 512),
    "124M": (12, 12, 768),
    "350M": (24, 16, 1024),
    "1B": (18, 16, 2048),
}


# Fields that change where or how fast a run goes, or what it logs, not what it learns: a resumed run may change them.
RESUMABLE_CHANGES = {"eval_every", "checkpoint_every", "log_every", "device", "compile", "micro_batch_tokens", "peak_flops"}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    output: str = Field(description="Run directory: checkpoint, metrics.json and loss.png.")
    data: list[str] = Field(default_factory=list, description="Export directories (or indexed dataset prefixes) to train on, read in a seeded shuffle.")
    plan: str | None = Field(None, description="A mixture plan (from `gristmill mix`) to read in order, instead of --data.")
    heldout: dict[str, str] = Field(default_factory=dict, description="Held-out sets NAME=PATH (an export directory or bucket prefix), scored in bits per byte.")
    model: str = Field("tiny", description=f"Model size: {', '.join(MODEL_SHAPES)}.")
    vocab_size: int | None = Field(None, ge=2, description="Vocabulary size (default: the tokenizer's, rounded up to 64).")
    batching: Literal["dd", "concat", "best_fit"] = Field("dd", description="dd: Dataset Decomposition buckets; concat: concat-and-chunk; best_fit: best-fit packing with document masking.")
    seq_len: int = Field(1024, ge=1, description="Sequence length for concat and best_fit batching, and for held-out windows (dd uses its longest bucket).")
    tokens_per_step: int = Field(65_536, ge=1, description="Tokens per optimizer step, constant whatever the sequence length.")
    micro_batch_tokens: int | None = Field(None, ge=1, description="Tokens per forward pass per process; steps are accumulated from several (default: the whole step at once).")
    curriculum: Literal["uniform", "grow_linear", "grow_p2"] = Field("grow_p2", description="Dataset Decomposition length curriculum.")
    cycles: int = Field(8, ge=1, description="Curriculum cycles over the buckets.")
    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of the peak.")
    schedule: Literal["cosine", "wsd"] = Field("cosine", description="cosine decay, or warmup-stable-decay (constant, then a linear decay).")
    warmup_steps: int = Field(100, ge=0, description="Linear warmup steps.")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of the steps spent decaying.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices and embeddings only).")
    beta1: float = Field(0.9, gt=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, gt=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0: no clipping).")
    seed: int = Field(0, description="Seeds the weights and the data order.")
    device: str = Field("auto", description="torch device (auto: cuda if available, else cpu).")
    bf16: bool = Field(False, description="bf16 autocast.")
    compile: bool = Field(False, description="torch.compile the model.")
    eval_every: int = Field(0, ge=0, description="Score the held-out sets every N steps (0: only at the end).")
    eval_tokens: int = Field(65_536, ge=1, description="Tokens scored per held-out set.")
    eval_seq_len: int | None = Field(None, ge=1, description="Length of held-out rows (default: seq_len for concat and best_fit, the longest bucket for dd); proxy comparisons fix it so every run is scored alike.")
    checkpoint_every: int = Field(0, ge=0, description="Save a checkpoint every N steps (0: only at the end).")
    log_every: int = Field(10, ge=1, description="Report progress every N steps.")
    peak_flops: float | None = Field(None, gt=0, description="Peak FLOP/s of one device for MFU (default: known GPUs; CPU reports n/a).")

    @model_validator(mode="after")
    def one_source_of_data(self) -> TrainConfig:
        if bool(self.data) == bool(self.plan):
            raise ValueError("give either --data prefixes or a --plan, not both and not neither")
        if self.model not in MODEL_SHAPES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_SHAPES)}")
        return self

