"""A freshly initialised RWKV-7 state dict in the official key layout (`rwkv1c init` writes one).

The initialisation follows the published RWKV-7 recipe (facts, not code): per-layer ratios shape the
token-shift mixes, decays spread from fast to slow across channels, low-rank "LoRA-like" paths start
at zero with small orthogonal second factors, output projections start at zero so every block begins
close to the identity, and the head starts orthogonal. It trains well from scratch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from rwkv1c.errors import UserError
from rwkv1c.model.config import HEAD_SIZE, VOCAB_SIZE, low_rank_sizes

if TYPE_CHECKING:
    import torch


def init_state_dict(
    n_layer: int,
    n_embd: int,
    vocab_size: int = VOCAB_SIZE,
    *,
    dim_ffn: int | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """A trainable initial state dict with the official RWKV-7 keys and shapes."""
    import torch

    if n_embd % 64 or n_embd <= 0 or n_layer <= 0 or vocab_size <= 0:
        raise UserError(
            f"bad shape: n_layer={n_layer}, n_embd={n_embd} (a positive multiple of 64), vocab={vocab_size}"
        )
    gen = torch.Generator().manual_seed(seed)
    C, L, V = n_embd, n_layer, vocab_size
    N = HEAD_SIZE
    H = C // N
    F_ = dim_ffn or 4 * C
    d_decay, d_aaa, d_mv, d_gate = low_rank_sizes(C)  # the released sizes where known

    def ortho(rows: int, cols: int, gain: float) -> torch.Tensor:
        w = torch.empty(rows, cols)
        torch.nn.init.orthogonal_(w, gain=gain * (math.sqrt(rows / cols) if rows > cols else 1.0), generator=gen)
        return w

    def uniform(shape: tuple[int, ...], bound: float) -> torch.Tensor:
        return (torch.rand(shape, generator=gen) * 2 - 1) * bound

    sd: dict[str, torch.Tensor] = {"emb.weight": uniform((V, C), 1e-4)}
    ddd = torch.arange(C, dtype=torch.float32) / C  # channel position in [0, 1)
    for i in range(L):
        p = f"blocks.{i}."
        r01 = i / max(L - 1, 1)  # 0 at the first layer, 1 at the last
        r10 = 1.0 - i / L  # 1 at the first layer, towards 0 at the last
        if i == 0:
            sd[p + "ln0.weight"], sd[p + "ln0.bias"] = torch.ones(C), torch.zeros(C)
        for ln in ("ln1", "ln2"):
            sd[p + f"{ln}.weight"], sd[p + f"{ln}.bias"] = torch.ones(C), torch.zeros(C)
        for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            sd[p + f"att.{name}"] = (1.0 - ddd.pow(power * r10)).view(1, 1, C)
        n = torch.arange(C, dtype=torch.float32)
        zig = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
        zig = zig * zig.abs()
        spread = -6 + 6 * (n / (C - 1)) ** (1 + r01**0.3)  # fast decay in early channels, slow in late ones
        sd[p + "att.w0"] = (spread + 0.5 + 2.5 * zig).view(1, 1, C)
        sd[p + "att.w1"], sd[p + "att.w2"] = torch.zeros(C, d_decay), ortho(d_decay, C, 0.1)
        sd[p + "att.a0"] = torch.zeros(1, 1, C)
        sd[p + "att.a1"], sd[p + "att.a2"] = torch.zeros(C, d_aaa), ortho(d_aaa, C, 0.1)
        if i > 0:
            sd[p + "att.v0"] = torch.ones(1, 1, C)
            sd[p + "att.v1"], sd[p + "att.v2"] = torch.zeros(C, d_mv), ortho(d_mv, C, 0.1)
        sd[p + "att.g1"], sd[p + "att.g2"] = torch.zeros(C, d_gate), ortho(d_gate, C, 0.1)
        sd[p + "att.k_k"] = torch.full((1, 1, C), 0.85)
        sd[p + "att.k_a"] = torch.ones(1, 1, C)
        sd[p + "att.r_k"] = torch.zeros(H, N)
        sd[p + "att.receptance.weight"] = uniform((C, C), 0.5 / math.sqrt(C))
        sd[p + "att.key.weight"] = uniform((C, C), 0.05 / math.sqrt(C))
        sd[p + "att.value.weight"] = uniform((C, C), 0.5 / math.sqrt(C))
        sd[p + "att.output.weight"] = torch.zeros(C, C)
        sd[p + "att.ln_x.weight"] = torch.full((C,), ((1 + i) / L) ** 0.7)
        sd[p + "att.ln_x.bias"] = torch.zeros(C)
        sd[p + "ffn.x_k"] = (1.0 - ddd.pow(r10**4)).view(1, 1, C)
        sd[p + "ffn.key.weight"] = uniform((F_, C), 0.5 / math.sqrt(C))
        sd[p + "ffn.value.weight"] = torch.zeros(C, F_)
    sd["ln_out.weight"], sd["ln_out.bias"] = torch.ones(C), torch.zeros(C)
    sd["head.weight"] = ortho(V, C, 0.5)  # `ortho` scales a tall matrix by sqrt(V / C): rows of norm 0.5
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    return sd


def save_state_dict(sd: dict[str, torch.Tensor], output: Path) -> None:
    """torch.save atomically (temporary name, then rename)."""
    import torch

    from rwkv1c.fsutil import atomic_path

    with atomic_path(output) as tmp:
        torch.save({k: v.contiguous() for k, v in sd.items()}, tmp)
