"""Weight-only quantisation of the block linears with bitsandbytes: NF4 (4-bit, double quantisation) or
LLM.int8 (8-bit). The six large matrices of every block (`rwkv1c.config.BLOCK_LINEARS`: attention
receptance / key / value / output, FFN key / value) are replaced by bitsandbytes layers; the embedding,
the head, norms, the time-mix vectors and the low-rank paths keep their precision, and so does the
recurrent state. QLoRA training and quantised inference use the same layers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rwkv1c.config import BLOCK_LINEARS, Quant
from rwkv1c.model.checkpoint import linear_names

if TYPE_CHECKING:
    import torch
    from torch import nn


@contextlib.contextmanager
def quiet_bitsandbytes() -> Iterator[None]:
    """bitsandbytes logs a warning about optional CPU hub kernels when imported (peft imports it too)."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def import_bitsandbytes() -> Any:
    """Import bitsandbytes quietly, or explain how to get it."""
    try:
        with quiet_bitsandbytes():
            import bitsandbytes
    except ImportError as exc:
        from rwkv1c.errors import UserError

        raise UserError(
            f"quantised weights need bitsandbytes, which cannot be imported: {exc}",
            hint="`pip install bitsandbytes` in the .venv, or use full precision (QUANT=none, the lora-bf16 profile)",
        ) from None
    return bitsandbytes


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return model.get_submodule(path), leaf


def quantize_block_linears(model: nn.Module, quant: Quant, *, device: Any, compute_dtype: torch.dtype) -> None:
    """Replace the six linears of every block by bitsandbytes layers on `device` (quantised there)."""
    if quant == "none":
        return
    bnb = import_bitsandbytes()
    for name in linear_names(len(model.blocks), BLOCK_LINEARS):  # type: ignore[arg-type]
        parent, leaf = _parent(model, name)
        lin = getattr(parent, leaf)
        # int8 quantises only on a move from the CPU to the device, so it starts from a CPU copy
        weight = lin.weight.data.to("cpu" if quant == "int8" else lin.weight.device, compute_dtype)
        if quant == "nf4":
            q = bnb.nn.Linear4bit(
                lin.in_features,
                lin.out_features,
                bias=False,
                compute_dtype=compute_dtype,
                compress_statistics=True,  # double quantisation: the block scales are quantised too
                quant_type="nf4",
                device="meta",
            )
            q.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=True)
        else:
            q = bnb.nn.Linear8bitLt(
                lin.in_features, lin.out_features, bias=False, has_fp16_weights=False, threshold=6.0, device="meta"
            )
            q.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        setattr(parent, leaf, q.to(device))  # bitsandbytes quantises when the weight moves to the device
        del lin, weight
    # peft picks its bitsandbytes-aware LoRA layers (and a working merge) only with these set
    setattr(model, "is_loaded_in_4bit", quant == "nf4")  # noqa: B010  (not an nn.Module attribute)
    setattr(model, "is_loaded_in_8bit", quant == "int8")  # noqa: B010
