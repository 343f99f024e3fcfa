"""The one way every command loads a model for inference: a `.pth` (base or merged), optionally with an
adapter folder applied on top, unmerged, on the device and in the precision asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rwkv1c.config import Quant
from rwkv1c.errors import UserError

if TYPE_CHECKING:
    import torch

    from rwkv1c.model.rwkv7 import RWKV7

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "fp16", "bf16", "fp32"]


def resolve_device(device: Device | str) -> str:
    """ "auto": CUDA when torch sees a GPU, else the CPU; "cuda" without a GPU is a clear error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU", hint="run `rwkv1c doctor`")
    return device


def resolve_dtype(dtype: DType | str, device: str) -> torch.dtype:
    """ "auto": fp16 on CUDA, fp32 on the CPU."""
    import torch

    if dtype == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]


def load_model(
    path: str | Path,
    adapter: str | Path | None = None,
    *,
    device: Any = "cpu",
    dtype: torch.dtype | None = None,
    quant: Quant = "none",
    quantize_head: bool = False,
) -> RWKV7:
    """A base / merged `.pth` on `device` in `dtype` (default: the file's), in eval mode.

    `quant` stores the block linears (and the head with `quantize_head`) in int8 or NF4
    (`rwkv1c.model.quant.quantize_for_inference`); each matrix is quantised on its way from the
    memory-mapped file to the device, so neither the host nor the card holds the full-precision model.
    An adapter folder is applied unmerged on top, on the quantised base as in QLoRA training; it is
    checked before the slow load, and one made for another base is refused (`adapter.check_base`).
    """
    from rwkv1c.model.adapter import apply_adapter, check_base, read_adapter_config
    from rwkv1c.model.checkpoint import load_checkpoint
    from rwkv1c.model.config import ModelConfig
    from rwkv1c.model.quant import quantize_for_inference
    from rwkv1c.model.rwkv7 import RWKV7

    path = Path(path)
    config = read_adapter_config(Path(adapter)) if adapter is not None else None
    sd = load_checkpoint(path)
    target = dtype or sd["emb.weight"].dtype
    if config is None and quant == "none":
        return RWKV7.from_state_dict(sd, device=device, dtype=target)
    if config is not None:
        check_base(config, path, ModelConfig.from_state_dict(sd))
    model = RWKV7.from_state_dict(sd, device="cpu", dtype=sd["emb.weight"].dtype)  # still the mapped file
    quantize_for_inference(model, quant, device=device, compute_dtype=target, head=quantize_head)
    if config is not None:
        apply_adapter(model, Path(adapter), config)  # type: ignore[arg-type]
    model.to(device=device, dtype=target)  # the rest, LoRA matrices too (add_lora made them fp32)
    return model.eval()
