"""`rwkv1c merge`: fold an adapter into its base and write a plain RWKV-7 `.pth`.

For every adapted linear W' = W + (alpha / r) * B @ A, computed in fp32 and stored in W's dtype; extra
trained parameters (norms, ...) replace the base's. The output has exactly the base's keys, shapes and
dtypes, so every RWKV-7 runtime loads it (the `rwkv` package, Albatross, RWKV-Runner). r and alpha
come from the adapter folder, never from the command line.

A QLoRA adapter is merged into the original bf16 base: the adapter learnt to correct the quantised
weights, so the merged model differs from the one that was trained by the quantisation error of the
base (docs/training.md measures the gap).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rwkv1c.errors import UserError, raise_all

if TYPE_CHECKING:
    import torch


def merge_state_dict(
    sd: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The base state dict with the adapter folded in (same keys, shapes, dtypes). Raises UserError on misfit."""
    import torch

    from rwkv1c.lora import merged_weight

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


def merge(
    *,
    adapter: Path,
    output: Path,
    model: Path | None = None,
    force: bool = False,
    overwrite: bool = False,
) -> int:
    """Merge a LoRA / QLoRA adapter into its base checkpoint and write a standalone RWKV-7 .pth.

    The result has the base's keys, shapes and dtype, so the `rwkv` package, Albatross and RWKV-Runner
    load it. r, alpha and the targets come from the adapter's adapter_config.json.

    Args:
        adapter: adapter folder (runs/NAME/adapter, or a checkpoint runs/NAME/checkpoints/step-N).
        output: the merged .pth to write (atomically).
        model: the base checkpoint (.pth; for QLoRA the original bf16 file); default: the file the adapter
            was trained on, as its adapter_config.json records it.
        force: merge although the base's sha256 differs from the adapter's record (same shapes).
        overwrite: replace OUTPUT if it exists.
    """
    import torch

    from rwkv1c.adapter import check_base, read_adapter_config, read_adapter_tensors
    from rwkv1c.fsutil import atomic_path
    from rwkv1c.model import ModelConfig, load_checkpoint

    config = read_adapter_config(adapter)
    if model is None:
        recorded = (config.get("training") or {}).get("model")
        if not recorded:
            raise UserError("the adapter does not record its base file", hint="pass --model BASE.pth")
        model = Path(recorded)
    problems = []
    if not model.is_file():
        problems.append(f"base checkpoint not found: {model} (pass --model BASE.pth)")
    if output.suffix != ".pth":
        problems.append(f"--output must end in .pth, got {output.name}")
    if output.exists() and not overwrite:
        problems.append(f"{output} already exists (pass --overwrite to replace it)")
    if output.resolve() == model.resolve():
        problems.append("--output is the base checkpoint itself; write the merged model to another file")
    raise_all(problems, "cannot merge")
    sd = load_checkpoint(model)
    check_base(config, model, ModelConfig.from_state_dict(sd), force=force)
    merged = merge_state_dict(sd, read_adapter_tensors(adapter), config)
    try:
        with atomic_path(output) as tmp:
            torch.save({k: v.contiguous() for k, v in merged.items()}, tmp)
    except OSError as exc:
        raise UserError(f"could not write {output}: {exc.strerror or exc}; nothing was written") from None
    n = sum(1 for k in merged if merged[k] is not sd[k])
    quant = config.get("quantization", "none")
    print(f"merged {n} tensors (r {config['r']}, alpha {config['alpha']}) into {output}")
    if quant != "none":
        print(
            f"note: a {quant} QLoRA adapter merged into the unquantised base; outputs differ slightly from the "
            "quantised model it was trained with (docs/training.md, 'quantisation gap')"
        )
    return 0
