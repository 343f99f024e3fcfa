"""LoRA on RWKV-7 through peft, and the parameter groups that can train whole (the base may be quantised: `quant.py`).

- `add_lora`: peft injects LoRA into the chosen block linears (full module names, so `att.key` never
  matches `ffn.key`); the adapter matrices are fp32; everything else is frozen except the extra groups
  asked for (norms, time_mix, emb, head), which train in fp32.
- `adapter_tensors` / `load_adapter_tensors`: the trained tensors under stable names —
  `blocks.N.att.key.lora_A` (r, in), `blocks.N.att.key.lora_B` (out, r) and extra parameters under
  their checkpoint keys — independent of peft's internal naming.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rwkv1c.config import BLOCK_LINEARS
from rwkv1c.model.checkpoint import linear_names
from rwkv1c.model.quant import quiet_bitsandbytes

if TYPE_CHECKING:
    import torch
    from torch import nn

ADAPTER = "default"  # peft's adapter name; one adapter per model here
_TIME_MIX = re.compile(r"blocks\.\d+\.(att\.(x_[rwkvag]|[wavg][012]|k_k|k_a|r_k)|ffn\.x_k)$")
_NORMS = re.compile(r"(blocks\.\d+\.(ln[012]|att\.ln_x)|ln_out)\.(weight|bias)$")
EXTRA_PATTERNS = {
    "norms": _NORMS,
    "time_mix": _TIME_MIX,
    "emb": re.compile(r"emb\.weight$"),
    "head": re.compile(r"head\.weight$"),
}


def add_lora(
    model: nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    targets: Sequence[str] = BLOCK_LINEARS,
    extra: Sequence[str] = (),
) -> list[str]:
    """Inject LoRA into `targets` of every block, freeze the rest, unfreeze `extra` groups (fp32).

    Returns the checkpoint keys of the extra trained parameters.
    """
    import torch

    with quiet_bitsandbytes():
        from peft import LoraConfig, inject_adapter_in_model

    names = linear_names(len(model.blocks), targets)  # type: ignore[arg-type]
    regex = "|".join(re.escape(n) for n in names)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft accepts any number; the scale is alpha / r
        lora_dropout=dropout,
        target_modules=f"^({regex})$",
        bias="none",
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in lora_layers(model).values():
        # peft would cast a bf16 input up to the adapter's fp32 first; under autocast the matmul runs
        # in bf16 anyway, so that is one wasted copy per adapted layer and step
        layer.cast_input_dtype_enabled = False
        for lin in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]):
            lin.weight.data = lin.weight.data.float()
            lin.weight.requires_grad_(True)
    extra_keys = extra_parameter_keys(model, extra)
    params = dict(model.named_parameters())
    for key in extra_keys:
        p = params[key]
        p.data = p.data.float()
        p.requires_grad_(True)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    return extra_keys


def lora_layers(model: nn.Module) -> dict[str, Any]:
    """Module name -> peft LoRA layer, for every adapted linear."""
    with quiet_bitsandbytes():
        from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def extra_parameter_keys(model: nn.Module, groups: Iterable[str]) -> list[str]:
    """Checkpoint keys of the parameters in the named extra groups (never LoRA or quantised weights)."""
    patterns = [EXTRA_PATTERNS[g] for g in groups]
    if not patterns:
        return []
    return [
        name
        for name, _ in model.named_parameters()
        if "lora_" not in name and ".base_layer." not in name and any(p.search(name) for p in patterns)
    ]


def adapter_tensors(model: nn.Module, extra_keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """The trained tensors under stable names (detached CPU copies, fp32)."""
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A"] = layer.lora_A[ADAPTER].weight.detach().float().cpu().contiguous()
        out[f"{name}.lora_B"] = layer.lora_B[ADAPTER].weight.detach().float().cpu().contiguous()
    params = dict(model.named_parameters())
    for key in extra_keys:
        out[key] = params[key].detach().float().cpu().contiguous()
    return out


def load_adapter_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors (names as `adapter_tensors` writes them) into a model that has LoRA injected."""
    import torch

    layers = lora_layers(model)
    params = dict(model.named_parameters())
    expected = {f"{n}.lora_{x}" for n in layers for x in "AB"}
    missing = sorted(expected - set(tensors))
    if missing:
        raise KeyError(f"adapter lacks {len(missing)} tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for key, value in tensors.items():
            name, _, part = key.rpartition(".")
            if part in ("lora_A", "lora_B"):
                target = getattr(layers[name], part)[ADAPTER].weight
            elif key in params:
                target = params[key]
            else:
                raise KeyError(f"adapter tensor {key} matches nothing in the model")
            if target.shape != value.shape:
                raise ValueError(f"size mismatch for {key}: adapter {tuple(value.shape)}, model {tuple(target.shape)}")
            target.copy_(value.to(target.dtype))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: LoRA matrices (with weight decay) and extra parameters (without)."""
    lora: list[torch.nn.Parameter] = []
    extra: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (lora if "lora_" in name else extra).append(p)
    groups = [{"params": lora, "weight_decay": weight_decay, "name": "lora"}]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0, "name": "extra"})
    return groups


def merged_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A, computed in fp32, returned in W's dtype."""
    return (weight.float() + scale * (lora_b.float() @ lora_a.float())).to(weight.dtype)
