"""A GPT in one file (RoPE, RMSNorm, SwiGLU, optional tied embeddings) for proxy training runs.

Attention is `F.scaled_dot_product_attention`: causal flash kernels on GPU, or a document mask for packed sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from gristmill.trainer.config import MODEL_SHAPES

@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    max_seq_len: int = 8192
    tie_embeddings: bool = True
    rope_base: float = 10_000.0
    norm_eps: float = 1e-5

    @staticmethod
    def named(name: str, vocab_size: int, **overrides) -> GPTConfig:
        if name not in MODEL_SHAPES:
            raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_SHAPES)}")
        n_layer, n_head, n_embd = MODEL_SHAPES[name]
        return replace(GPTConfig(n_layer, n_head, n_embd, vocab_size), **overrides)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_dim(self) -> int:
        """SwiGLU hidden width: 8/3 of the model width (same parameters as a 4x GELU MLP), rounded up to 64."""
        return 64 * math.ceil(8 * self.n_embd / 3 / 64)


def rope_tables(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair, shaped (max_seq_len, head_dim / 2)."""
    frequencies = config.rope_base ** (-torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim)
    angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float32), frequencies)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i + d/2}) by position-dependent angles; x is (batch, heads, time, head_dim)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(x).view(batch, time, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(batch, time, width))


class SwiGLU(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.n_embd, 2 * config.ffn_dim, bias=False)
        self.down = nn.Linear(config.ffn_dim, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attention = Attention(config)
        self.mlp_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        cos, sin = rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Residual projections start smaller so the residual stream's variance does not grow with depth (GPT-2).
        for name, parameter in self.named_parameters():
            if name.endswith(("attention.proj.weight", "mlp.down.weight")):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, inputs: torch.Tensor, document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, time, vocab). With `document_ids`, a token attends only to earlier tokens of its own document.

        RoPE is relative, so packed documents need no position reset: the mask alone isolates them.
        """
        time = inputs.shape[1]
        if time > self.config.max_seq_len:
            raise ValueError(f"sequence of {time} tokens exceeds max_seq_len {self.config.max_seq_len}")
        cos, sin = self.rope_cos[:time], self.rope_sin[:time]
        mask = None
        if document_ids is not None:
            causal = torch.ones(time, time, dtype=torch.bool, device=inputs.device).tril()
            mask = ((document_ids[:, :, None] == document_ids[:, None, :]) & causal)[:, None]
        x = self.embedding(inputs)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        return self.lm_head(self.final_norm(x))

    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def matmul_parameter_count(self) -> int:
        """Weights used in matrix multiplies: all but the input embedding lookup (which tying makes the output layer)."""
        lookup_only = 0 if self.config.tie_embeddings else self.embedding.weight.numel()
        return self.parameter_count() - lookup_only

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token, PaLM's estimate: 6N + 12·L·H·Q·T (forward and backward, attention included)."""
        config = self.config
        return 6 * self.matmul_parameter_count() + 12 * config.n_layer * config.n_head * config.head_dim * seq_len
