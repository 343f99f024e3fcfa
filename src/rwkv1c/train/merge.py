"""An adapter folded into its base: a plain RWKV-7 state dict (what `rwkv1c merge` writes).

For every adapted linear W' = W + (alpha / r) * B @ A, computed in fp32 and stored in W's dtype; extra
trained parameters (norms, ...) replace the base's. The output has exactly the base's keys, shapes and
dtypes, so every RWKV-7 runtime loads it (the `rwkv` package, Albatross, RWKV-Runner). r and alpha
come from the adapter folder, never from the command line.

A QLoRA adapter is merged into the original bf16 base: the adapter learnt to correct the quantised
weights, so the merged model differs from the one that was trained by the quantisation error of the
base (docs/training.md measures the gap).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rwkv1c.errors import UserError, raise_all

if TYPE_CHECKING:
    import torch


def merge_state_dict(
    sd: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The base state dict with the adapter folded in (same keys, shapes, dtypes). Raises UserError on misfit."""
    import torch

    from rwkv1c.model.lora import merged_weight

    scale = float(config["alpha"]) / int(config["r"])
    out = dict(sd)
    problems: list[str] = []
    used: set[str] = set()
    for key in sorted(tensors):
        if not key.endswith(".lora_A"):
            continue
        module = key[: -len(".lora_A")]
        base_key = f"{module}.weight"
        a, b = tensors[key], tensors.get(f"{module}.lora_B")
        used |= {key, f"{module}.lora_B"}
        if b is None or base_key not in sd:
            problems.append(f"{module}: " + ("lora_B missing" if b is None else "no such weight in the base"))
            continue
        w = sd[base_key]
        if a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(w.shape):
            problems.append(f"{module}: B {tuple(b.shape)} @ A {tuple(a.shape)} does not fit {tuple(w.shape)}")
            continue
        out[base_key] = merged_weight(w, a, b, scale)
    for key in config.get("extra_keys", []):
        used.add(key)
        if key not in tensors or key not in sd:
            problems.append(f"{key}: listed as trained but missing from the adapter or the base")
        elif tensors[key].shape != sd[key].shape:
            problems.append(f"{key}: {tuple(tensors[key].shape)} vs base {tuple(sd[key].shape)}")
        else:
            out[key] = tensors[key].to(sd[key].dtype)
    stray = sorted(set(tensors) - used)
    if stray:
        problems.append(f"{len(stray)} adapter tensors fit nothing (e.g. {stray[0]})")
    raise_all(problems[:8], "the adapter does not fit this base")
    bad = [k for k in out if out[k] is not sd[k] and not torch.isfinite(out[k]).all()]
    if bad:
        raise UserError(
            f"the merged weights contain NaN or Inf ({len(bad)} tensors, e.g. {bad[0]}); nothing was written",
            hint="the adapter is broken (a diverged run?): check runs/NAME/metrics.jsonl and use an earlier checkpoint",
        )
    return out
