"""The model a run trains: the frozen base, optionally quantised, with LoRA (and whole extra groups) on top.

`build_model` is the one recipe: `rwkv1c train` calls it on the checkpoint it loaded, and
`bench/train.py` on random weights with the released shapes, so the benchmark measures exactly what
training runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rwkv1c.config import TrainConfig

if TYPE_CHECKING:
    import torch

    from rwkv1c.model.rwkv7 import RWKV7

Precision = Literal["bf16", "fp32"]


def precision_for(cfg: TrainConfig, device: str) -> Precision:
    """PRECISION=auto: bf16 autocast on a GPU, fp32 on the CPU."""
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if device == "cuda" else "fp32"


def base_dtype(precision: Precision) -> torch.dtype:
    """The dtype the frozen base is held in: bf16 under bf16 autocast, else fp32."""
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def load_base(path: Path, precision: Precision, *, full: bool = False) -> RWKV7:
    """The base checkpoint on the CPU in the dtype it trains in (`build_model` moves it): the frozen base in
    the compute dtype; for full fine-tuning fp32 master weights (autocast computes in bf16)."""
    import torch

    from rwkv1c.model.rwkv7 import RWKV7

    return RWKV7.from_pth(path, device="cpu", dtype=torch.float32 if full else base_dtype(precision))


def compile_blocks_for(setting: str, device: str, quant: str, graphs: bool = False) -> bool:
    """Whether COMPILE=`setting` sends the blocks through torch.compile. `auto` does on a GPU where the
    step is not replayed from a CUDA graph (several GPUs, CUDA_GRAPHS=off): there it cuts the host time of
    dozens of small ops per layer; a replayed step has no host time left to cut, and compiling costs
    minutes at the start of every run. Never with int8 layers, whose quantisation has data-dependent
    shapes: the graph breaks at every layer, and the compile of those fragments (minutes on the first step,
    again when validation flips grad mode) costs more than the fusion saves."""
    if setting == "auto":
        return device == "cuda" and quant != "int8" and not graphs
    return setting == "on"


def build_model(model: RWKV7, cfg: TrainConfig, device: Any, *, graphs: bool = False) -> tuple[RWKV7, list[str]]:
    """Quantise the block linears as QUANT says, move to `device`, add LoRA (seeded: the same initial
    adapter on every rank and every resume), set the compile flag. Returns the model in train mode and
    the checkpoint keys of the extra parameter groups that train whole. METHOD=full trains every
    parameter instead (no LoRA, no quantisation). `graphs`: the step will be replayed from a CUDA graph."""
    import torch

    from rwkv1c.model.lora import add_lora
    from rwkv1c.model.quant import quantize_block_linears

    if cfg.method == "full":
        model.to(device)
        for p in model.parameters():
            p.requires_grad_(True)
        model.compile_blocks = compile_blocks_for(cfg.compile, torch.device(device).type, "none", graphs)
        return model.train(), []
    quantize_block_linears(model, cfg.quant, device=device, compute_dtype=model.emb.weight.dtype)
    model.to(device)
    torch.manual_seed(cfg.seed)
    extra = add_lora(
        model,
        r=cfg.lora_r,
        alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout,
        targets=cfg.lora_targets,
        extra=cfg.train_extra,
    )
    model.compile_blocks = compile_blocks_for(cfg.compile, torch.device(device).type, cfg.quant, graphs)
    return model.train(), extra


def param_groups(model: RWKV7, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups. LoRA: the adapter matrices (with weight decay) and extra groups (without). Full: the
    matrices of the blocks (with weight decay), the embedding, head, norms and vectors (without)."""
    from rwkv1c.model import lora

    if cfg.method != "full":
        return lora.param_groups(model, cfg.weight_decay)
    decayed: list[Any] = []
    plain: list[Any] = []
    for name, p in model.named_parameters():
        is_matrix = p.dim() == 2 and name.startswith("blocks.") and name.endswith(".weight")
        (decayed if is_matrix else plain).append(p)
    return [
        {"params": decayed, "weight_decay": cfg.weight_decay, "name": "matrices"},
        {"params": plain, "weight_decay": 0.0, "name": "other"},
    ]
