"""The sizes of an RWKV-7 model, torch-free: what a checkpoint's tensor shapes say, and what they imply.

`ModelConfig` is the one description of a model's shape. The model (`rwkv7.py`), checkpoint validation
(`checkpoint.py`), initialisation (`init.py`) and the memory model (`rwkv1c.machine.memory`) all read it,
so a size rule or a parameter count lives here once. Nothing here imports torch: `rwkv1c plan` answers
for a preset instantly, and a state dict is only read for its `.shape`s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rwkv1c.config import BLOCK_LINEARS

HEAD_SIZE = 64  # every released RWKV-7 uses 64; kernels and the GroupNorm eps assume it
VOCAB_SIZE = 65536  # rows of the embedding / head of every RWKV World model

ATT_VECTORS = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a")
ATT_LORAS = {"w": "d_decay", "a": "d_aaa", "v": "d_mv", "g": "d_gate"}  # w1/w2, a1/a2, v1/v2, g1/g2
ATT_LINEARS = ("receptance", "key", "value", "output")
# block 0 of the official checkpoints carries a value-residual path it never uses
UNUSED_BLOCK0_KEYS = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")

# Low-rank sizes (decay, aaa, mv, gate) of the released RWKV-7 checkpoints, by width: the 0.1B / 0.4B
# values are the v7 demo's constants and the fla-hub conversions' configs; 1.5B / 2.9B / 7.2B follow
# the training code's rule below.
RELEASED_LOW_RANK: dict[int, tuple[int, int, int, int]] = {
    768: (64, 64, 32, 128),
    1024: (64, 64, 32, 128),
    2048: (96, 96, 64, 256),
    2560: (96, 96, 64, 320),
    4096: (128, 128, 96, 480),
}


def _round32(x: float) -> int:
    return max(32, int(round(x / 32) * 32))


def low_rank_sizes(n_embd: int) -> tuple[int, int, int, int]:
    """(decay, aaa, mv, gate) low-rank sizes for a width: the released ones where known, else the training
    code's rule, round(k * sqrt(C) / 32) * 32 with k 1.8 / 1.8 / 1.3, and round(0.6 * C**0.8 / 32) * 32."""
    if n_embd in RELEASED_LOW_RANK:
        return RELEASED_LOW_RANK[n_embd]
    root = n_embd**0.5
    return _round32(1.8 * root), _round32(1.8 * root), _round32(1.3 * root), _round32(0.6 * n_embd**0.8)


@dataclass(frozen=True)
class ModelConfig:
    """Every size of an RWKV-7 model; read from a checkpoint by `ModelConfig.from_state_dict`."""

    n_layer: int
    n_embd: int
    vocab_size: int = VOCAB_SIZE
    dim_ffn: int = 0  # 0: 4 x n_embd, as every release
    d_decay: int = 0  # the four low-rank sizes; 0: `low_rank_sizes(n_embd)`
    d_aaa: int = 0
    d_mv: int = 0
    d_gate: int = 0
    head_size: int = HEAD_SIZE

    def __post_init__(self) -> None:
        if self.dim_ffn == 0:
            object.__setattr__(self, "dim_ffn", 4 * self.n_embd)
        sizes = low_rank_sizes(self.n_embd)
        for name, default in zip(("d_decay", "d_aaa", "d_mv", "d_gate"), sizes, strict=True):
            if getattr(self, name) == 0:
                object.__setattr__(self, name, default)

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any]) -> ModelConfig:
        """Infer the sizes from tensor shapes (`checkpoint.check_state_dict` gives clear errors first)."""
        vocab, C = sd["emb.weight"].shape
        layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
        N = sd["blocks.0.att.r_k"].shape[1]
        v1 = sd.get("blocks.1.att.v1", sd.get("blocks.0.att.v1"))
        d_mv = v1.shape[1] if v1 is not None else 32  # a 1-layer model has no value residual at all
        return cls(
            n_layer=len(layers),
            n_embd=int(C),
            vocab_size=int(vocab),
            dim_ffn=int(sd["blocks.0.ffn.key.weight"].shape[0]),
            d_decay=int(sd["blocks.0.att.w1"].shape[1]),
            d_aaa=int(sd["blocks.0.att.a1"].shape[1]),
            d_mv=int(d_mv),
            d_gate=int(sd["blocks.0.att.g1"].shape[1]),
            head_size=int(N),
        )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key of an official checkpoint with its shape (block 0's unused v0/v1/v2 left out)."""
        C, F, V, H, N = self.n_embd, self.dim_ffn, self.vocab_size, self.n_head, self.head_size
        shapes: dict[str, tuple[int, ...]] = {
            "emb.weight": (V, C),
            "blocks.0.ln0.weight": (C,),
            "blocks.0.ln0.bias": (C,),
        }
        for i in range(self.n_layer):
            p = f"blocks.{i}."
            for ln in ("ln1", "ln2"):
                shapes[p + f"{ln}.weight"] = shapes[p + f"{ln}.bias"] = (C,)
            for name in ATT_VECTORS:
                if not (i == 0 and name == "v0"):
                    shapes[p + f"att.{name}"] = (1, 1, C)
            for x, size in ATT_LORAS.items():
                if not (i == 0 and x == "v"):
                    d = getattr(self, size)
                    shapes[p + f"att.{x}1"], shapes[p + f"att.{x}2"] = (C, d), (d, C)
            shapes[p + "att.r_k"] = (H, N)
            for name in ATT_LINEARS:
                shapes[p + f"att.{name}.weight"] = (C, C)
            shapes[p + "att.ln_x.weight"] = shapes[p + "att.ln_x.bias"] = (C,)
            shapes[p + "ffn.x_k"] = (1, 1, C)
            shapes[p + "ffn.key.weight"], shapes[p + "ffn.value.weight"] = (F, C), (C, F)
        shapes["ln_out.weight"] = shapes["ln_out.bias"] = (C,)
        shapes["head.weight"] = (V, C)
        return shapes

    # ---- parameter counts (the memory model in rwkv1c.machine.memory multiplies these by bytes)

    @property
    def n_params(self) -> int:
        """Every parameter of an official checkpoint (block 0 keeps its unused v0/v1/v2 too)."""
        C, L = self.n_embd, self.n_layer
        low_rank = 2 * C * (self.d_decay + self.d_aaa + self.d_mv + self.d_gate)
        # x_r x_w x_k x_v x_a x_g, w0 a0 v0, k_k k_a r_k, ln_x w+b, ln1 w+b, ln2 w+b, ffn.x_k
        vectors = 6 * C + 3 * C + 3 * C + 2 * C + 4 * C + C
        per_layer = 4 * C * C + 2 * C * self.dim_ffn + low_rank + vectors
        return L * per_layer + 2 * self.vocab_size * C + 2 * C + 2 * C  # + ln0 (block 0) + ln_out

    @property
    def linear_params(self) -> int:
        """Parameters of the six large matrices of every block (`BLOCK_LINEARS`): what quantisation stores."""
        C, F = self.n_embd, self.dim_ffn
        return self.n_layer * (4 * C * C + 2 * C * F)

    @property
    def largest_linear(self) -> int:
        """Elements of the largest block matrix (the FFN's)."""
        return self.n_embd * self.dim_ffn

    def lora_params(self, rank: int, targets: Sequence[str] = BLOCK_LINEARS) -> int:
        """LoRA A and B of each target matrix in every block: rank x (in + out) each."""
        C, F = self.n_embd, self.dim_ffn
        sizes = {"att.receptance": 2 * C, "att.key": 2 * C, "att.value": 2 * C, "att.output": 2 * C}
        sizes |= {"ffn.key": C + F, "ffn.value": F + C}
        return self.n_layer * rank * sum(sizes[t] for t in targets)

    def group_params(self, group: str) -> int:
        """Parameters of a parameter group that trains whole: norms, time_mix, emb or head."""
        C, L = self.n_embd, self.n_layer
        if group == "norms":
            return L * 6 * C + 4 * C  # ln1, ln2, ln_x (weight + bias) per block; ln0 and ln_out
        if group == "time_mix":
            low_rank = 2 * C * (self.d_decay + self.d_aaa + self.d_mv + self.d_gate)
            return L * (low_rank + 13 * C)  # x_r..x_g, w0 a0 v0, k_k k_a r_k, ffn.x_k
        if group in ("emb", "head"):
            return self.vocab_size * C
        raise ValueError(f"unknown parameter group {group!r}")
