"""The one way every command loads a model for inference: a `.pth` (base or merged), optionally with an
adapter folder applied on top, unmerged, on the device and in the precision asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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
) -> RWKV7:
    """A base / merged `.pth` on `device` in `dtype` (default: the file's), with an adapter folder applied
    unmerged when given, in eval mode. The adapter folder is checked before the slow load, and an adapter
    made for another base is refused (`adapter.check_base`)."""
    from rwkv1c.model.adapter import apply_adapter, check_base, read_adapter_config
    from rwkv1c.model.checkpoint import load_checkpoint
    from rwkv1c.model.config import ModelConfig
    from rwkv1c.model.rwkv7 import RWKV7

    path = Path(path)
    config = read_adapter_config(Path(adapter)) if adapter is not None else None
    sd = load_checkpoint(path)
    if config is None:
        return RWKV7.from_state_dict(sd, device=device, dtype=dtype)
    check_base(config, path, ModelConfig.from_state_dict(sd))
    model = RWKV7.from_state_dict(sd, device="cpu", dtype=dtype)
    apply_adapter(model, Path(adapter), config)  # type: ignore[arg-type]
    model.to(device=device, dtype=dtype or sd["emb.weight"].dtype)  # LoRA matrices too (add_lora made them fp32)
    return model.eval()
