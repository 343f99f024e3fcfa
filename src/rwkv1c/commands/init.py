"""`rwkv1c init`: write a freshly initialised RWKV-7 checkpoint in the official key layout."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from rwkv1c.errors import raise_all
from rwkv1c.model.config import VOCAB_SIZE

DType = Literal["bf16", "fp16", "fp32"]


def init(
    output: Path,
    *,
    n_layer: int = 2,
    n_embd: int = 128,
    vocab_size: int = VOCAB_SIZE,
    preset: str | None = None,
    dtype: DType = "bf16",
    seed: int = 0,
    overwrite: bool = False,
) -> None:
    """Write a randomly initialised RWKV-7 checkpoint (official key layout) for pretraining or tests.

    Low-rank sizes are the released ones for the released widths, else the training code's rule.

    Args:
        output: the .pth file to write.
        n_layer: number of layers (ignored with --preset).
        n_embd: width, a multiple of 64 (ignored with --preset).
        vocab_size: vocabulary size (65536 for the RWKV World tokenizer).
        preset: take n_layer / n_embd from configs/model/<preset>.env (e.g. rwkv7-0.1b).
        dtype: tensor dtype in the file; the official releases are bf16.
        seed: random seed; the same seed gives the same file contents.
        overwrite: replace an existing file.
    """
    import torch

    from rwkv1c.config import load_preset
    from rwkv1c.model.init import init_state_dict, save_state_dict

    problems = []
    if output.exists() and not overwrite:
        problems.append(f"{output} already exists (pass --overwrite to replace it)")
    if output.suffix != ".pth":
        problems.append(f"output must end in .pth, got {output.name}")
    raise_all(problems, "cannot initialise a model")
    if preset:
        p = load_preset(preset)
        n_layer, n_embd = p.n_layer, p.n_embd
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    sd = init_state_dict(n_layer, n_embd, vocab_size, seed=seed, dtype=torch_dtype)
    save_state_dict(sd, output)
    params = sum(t.numel() for t in sd.values())
    print(
        f"wrote {output}: {n_layer} layers, width {n_embd}, vocab {vocab_size}, {params / 1e6:.2f}M parameters, {dtype}"
    )
