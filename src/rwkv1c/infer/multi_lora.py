"""Several LoRA adapters on one base, unmerged, in one batch: every row of a model call picks its own adapter.

Each adapted linear `y = W x` becomes `y = W x + B_k (A_k x)` for the row's adapter k (k = 0: the base, no
delta). The adapters of a linear are stacked along the rank, each block padded to the largest rank R:

    A (K*R, in), B (out, K*R) with alpha / r folded into B, owner (K*R,) = the adapter of each column

and a call computes every adapter's low-rank projection for every row, keeps the row's own block with a
mask, and projects back: two matmuls whose inner size is K*R, no gather of per-row weights, no branch on
which adapters are present, so the same code runs inside a captured CUDA graph. Padding and masked columns
add exact zeros. With a handful of adapters of rank 8-64 the extra work is that of one LoRA of rank K*R.

Which adapter each row uses lives in `AdapterRows`: a static (capacity,) buffer for decode steps (the CUDA
graphs of `fast_decode` read its address, the engine writes it before every step) and a per-call tensor for
prefills. Adapters that train whole parameter groups as well (norms, time_mix, emb, head) change the base's
own weights, so they cannot share it; they are refused here (serve one alone, or merge it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rwkv1c.errors import UserError, raise_all

if TYPE_CHECKING:
    from rwkv1c.model.rwkv7 import RWKV7


class AdapterRows:
    """The adapter index of every row of the current model call (0: the base; i: the i-th adapter).

    `names[i - 1]` names adapter i. `decode` (capacity,) is the static buffer decode steps read; `current`
    is what the adapted linears read now: `decode`, or a prefill's own (B,) tensor.
    """

    def __init__(self, names: Sequence[str], device: Any) -> None:
        self.names = list(names)
        self.device = torch.device(device)
        self.decode = torch.zeros(0, dtype=torch.long, device=self.device)
        self.current = self.decode

    def bind(self, capacity: int) -> None:
        """Make the decode buffer for an engine of `capacity` rows (before any CUDA graph is captured)."""
        self.decode = torch.zeros(capacity, dtype=torch.long, device=self.device)
        self.current = self.decode

    def for_decode(self, ids: torch.Tensor) -> None:
        """Rows 0..n-1 of the next decode step use adapters `ids` (n,) (a tensor on the device)."""
        n = ids.shape[0]
        self.decode[:n].copy_(ids)
        self.decode[n:].zero_()  # rows past n are free slots that a graph bucket computes anyway
        self.current = self.decode

    def for_prefill(self, ids: Sequence[int]) -> None:
        """The rows of the next `model.forward` call use adapters `ids`."""
        self.current = torch.tensor(list(ids), dtype=torch.long, device=self.device)


class MultiLoraLinear(nn.Module):
    """A frozen linear plus the row-selected LoRA delta of several adapters (see the module docstring)."""

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    owner: torch.Tensor

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, owner: torch.Tensor, rows: AdapterRows):
        super().__init__()
        self.base = base
        self.register_buffer("lora_a", a)  # (K*R, in)
        self.register_buffer("lora_b", b)  # (out, K*R), scale folded in
        self.register_buffer("owner", owner)  # (K*R,) long, adapter index 1..K of each column
        self.rows = rows
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        ids = self.rows.current[: x.shape[0]]  # (b,) for x (b, in); (B,) for x (B, T, in)
        keep = self.owner == (ids[:, None] if x.dim() == 2 else ids[:, None, None])  # (b, K*R) or (B, 1, K*R)
        h = (x @ self.lora_a.t()).masked_fill(~keep, 0.0)
        return y + h @ self.lora_b.t()


def parse_adapter_specs(specs: Sequence[str]) -> list[tuple[str | None, Path]]:
    """`NAME=DIR` or `DIR` items of --adapter as (name or None, folder)."""
    out: list[tuple[str | None, Path]] = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if sep and name and not any(c in name for c in "/\\") and not Path(spec).exists():
            out.append((name, Path(folder)))
        else:
            out.append((None, Path(spec)))
    return out


def read_adapters(adapters: Sequence[tuple[str, Path]]) -> list[dict[str, Any]]:
    """Every adapter's config, checked for sharing one base unmerged; every problem reported at once."""
    from rwkv1c.model.adapter import read_adapter_config

    problems, configs = [], []
    for name, folder in adapters:
        try:
            config = read_adapter_config(folder)
        except UserError as exc:
            problems.append(f"{name}: {exc}")
            continue
        extra = list(config.get("extra_groups") or []) or list(config.get("extra_keys") or [])
        if extra:
            problems.append(
                f"{name}: the adapter in {folder} also trains {', '.join(map(str, extra[:4]))}, which changes the "
                "base's own weights, so it cannot share the base with other adapters; serve it alone "
                f"(--adapter {folder}) or merge it (`rwkv1c merge`) and serve the merged model"
            )
        configs.append(config)
    raise_all(problems, "cannot serve these adapters together")
    return configs


def attach_adapters(model: RWKV7, model_path: Path, adapters: Sequence[tuple[str, Path]]) -> AdapterRows:
    """Wrap the adapted linears of `model` (already on its device and dtype) with every adapter, unmerged.

    Each adapter must have been trained on this base (`check_base`) and train LoRA matrices only.
    """
    from rwkv1c.model.adapter import check_base, read_adapter_tensors

    configs = read_adapters(adapters)
    problems = []
    for (name, _), config in zip(adapters, configs):
        try:
            check_base(config, model_path, model.config)
        except UserError as exc:
            problems.append(f"{name}: {exc}")
    raise_all(problems, "cannot serve these adapters on this model")
    loras = []
    for (name, folder), config in zip(adapters, configs):
        loras.append((name, float(config["alpha"]) / int(config["r"]), read_adapter_tensors(folder)))
    return attach(model, loras)


def attach(model: RWKV7, loras: Sequence[tuple[str, float, dict[str, torch.Tensor]]]) -> AdapterRows:
    """Wrap the linears that any of `loras` adapts: (name, scale alpha / r, {"blocks.N.att.key.lora_A": (r, in),
    "...lora_B": (out, r)}) each; adapter i + 1 is loras[i]."""
    weight = model.emb.weight
    rows = AdapterRows([name for name, _, _ in loras], weight.device)
    K = len(loras)
    R = max(t.shape[0] for _, _, tensors in loras for key, t in tensors.items() if key.endswith(".lora_A"))
    owner = torch.arange(1, K + 1, device=weight.device).repeat_interleave(R)
    targets = sorted({key[: -len(".lora_A")] for _, _, t in loras for key in t if key.endswith(".lora_A")})
    modules = dict(model.named_modules())
    for target in targets:
        base = modules.get(target)
        if not isinstance(base, nn.Linear):
            raise UserError(f"an adapter targets {target}, which is not a linear layer of this model")
        a = torch.zeros(K * R, base.in_features, dtype=torch.float32)
        b = torch.zeros(base.out_features, K * R, dtype=torch.float32)
        for k, (name, scale, t) in enumerate(loras):
            if f"{target}.lora_A" not in t:
                continue
            la, lb = t[f"{target}.lora_A"].float(), t[f"{target}.lora_B"].float()  # (r, in), (out, r)
            r = la.shape[0]
            if la.shape != (r, base.in_features) or lb.shape != (base.out_features, r):
                raise UserError(f"{name}: {target} has LoRA shapes {tuple(la.shape)}, {tuple(lb.shape)}")
            a[k * R : k * R + r] = la.cpu()
            b[:, k * R : k * R + r] = lb.cpu() * scale
        parent_name, _, child = target.rpartition(".")
        wrapped = MultiLoraLinear(base, a.to(weight), b.to(weight), owner, rows)
        setattr(modules[parent_name], child, wrapped)
    return rows
