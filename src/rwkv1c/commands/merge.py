"""`rwkv1c merge`: fold an adapter into its base and write a plain RWKV-7 `.pth` (`rwkv1c.train.merge`).

The output has exactly the base's keys, shapes and dtypes, so every RWKV-7 runtime loads it.
"""

from __future__ import annotations

from pathlib import Path

from rwkv1c.errors import UserError, raise_all


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

    from rwkv1c.fsutil import atomic_path
    from rwkv1c.model.adapter import check_base, read_adapter_config, read_adapter_tensors
    from rwkv1c.model.checkpoint import load_checkpoint
    from rwkv1c.model.config import ModelConfig
    from rwkv1c.train.merge import merge_state_dict

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
