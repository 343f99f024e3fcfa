"""Quantised block linears: the six large matrices of every block (`rwkv1c.config.BLOCK_LINEARS`:
attention receptance / key / value / output, FFN key / value) stored in 8 or 4 bits. The embedding,
norms, the time-mix vectors and the low-rank paths keep their precision, and so does the recurrent state
(fp32); the head is quantised for inference only when asked.

- Training (QLoRA, `quantize_block_linears`): bitsandbytes NF4 (double quantisation) or LLM.int8 layers,
  the frozen base of a LoRA adapter.
- Inference (`quantize_for_inference`): NF4 through bitsandbytes (its batch-1 kernel reads the 4-bit
  weights directly), and weight-only int8 of our own (`Int8Linear`: one scale per output channel,
  activations untouched). bitsandbytes' int8 quantises the activations too and picks outlier columns at
  run time, which costs accuracy at threshold 0, and host syncs (no CUDA graphs) otherwise; weight-only
  int8 is what an int8 model for decoding needs: half the bytes of fp16 read per token, same math.
"""

from __future__ import annotations

import contextlib
import functools
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


INFERENCE_QUANTS = ("none", "int8", "nf4")
GEMV_ROWS = 16  # Int8Linear takes the Triton kernel up to this many input rows (decoding), else dequantises


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


# ---------------------------------------------------------------------------------------------- inference


def int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (int8 (out, in), fp32 scale (out,)) with w ~ q * scale."""
    import torch

    w = weight.float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def _int8_linear_class() -> type:
    """`Int8Linear`, defined on first use (torch is imported only then)."""
    import torch
    from torch import nn

    class Int8Linear(nn.Linear):
        """A frozen linear with weight-only int8 weights: y = x @ (q * scale)^T.

        `weight` holds the int8 values (so peft wraps it like any linear), `weight_scale` one fp32 scale per
        output channel. On CUDA, up to GEMV_ROWS input rows go through a Triton kernel that reads the int8
        weights once (decoding); more rows (prefill) dequantise the matrix and use cuBLAS.
        """

        weight_scale: torch.Tensor

        def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
            nn.Module.__init__(self)
            self.out_features, self.in_features = q.shape
            self.weight = nn.Parameter(q, requires_grad=False)
            self.register_buffer("weight_scale", scale.float())
            self.register_parameter("bias", None)

        def _apply(self, fn: Any, recurse: bool = True) -> Any:
            # keep the scales in fp32 when the model is cast to fp16 / bf16 (a move to a device still applies)
            scale = self.weight_scale
            out = super()._apply(fn, recurse)
            self.weight_scale = scale.to(self.weight.device)
            return out

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = x.numel() // x.shape[-1]
            if x.is_cuda and rows <= GEMV_ROWS and x.dtype in (torch.float16, torch.bfloat16):
                return int8_gemv(x, self.weight, self.weight_scale)
            w = self.weight.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]
            return torch.nn.functional.linear(x, w)

    return Int8Linear


def int8_linear(weight: torch.Tensor) -> nn.Module:
    """An `Int8Linear` holding `weight` (out, in) quantised, on the weight's device."""
    q, scale = int8_weight(weight)
    return _int8_linear_class()(q, scale)  # type: ignore[no-any-return]


def is_int8_linear(module: Any) -> bool:
    return type(module).__name__ == "Int8Linear" and hasattr(module, "weight_scale")


def quantize_for_inference(
    model: nn.Module, quant: Quant, *, device: Any, compute_dtype: torch.dtype, head: bool = False
) -> None:
    """Replace the block linears (and the head when `head`) by quantised layers on `device`.

    Works from the weights as they are (the memory-mapped checkpoint on the CPU): each matrix is moved to
    the device and quantised there one at a time, so neither the host nor the card ever holds the
    full-precision model.
    """
    if quant == "none":
        return
    names = linear_names(len(model.blocks), BLOCK_LINEARS) + (["head"] if head else [])  # type: ignore[arg-type]
    if quant == "nf4":
        bnb = import_bitsandbytes()
    for name in names:
        parent, leaf = _parent(model, name)
        lin = getattr(parent, leaf)
        weight = lin.weight.data.to(device, compute_dtype)
        if quant == "int8":
            q: Any = int8_linear(weight)
        else:
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=compute_dtype,
                                  compress_statistics=True, quant_type="nf4", device="meta")  # fmt: skip
            q.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=True)
            q = q.to(device)
        setattr(parent, leaf, q)
        del lin, weight
    setattr(model, "is_loaded_in_4bit", quant == "nf4")  # noqa: B010  (peft picks its bitsandbytes layers)
    setattr(model, "is_loaded_in_8bit", False)  # noqa: B010  (Int8Linear is wrapped as a plain linear)


@functools.cache
def _gemv_kernel() -> Any:
    """The Triton kernel of `int8_gemv`, defined (and compiled on first launch) on first use."""
    import triton
    import triton.language as tl

    @triton.autotune(
        configs=[
            triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
            for bn, bk, w, st in ((32, 256, 4, 4), (64, 128, 4, 4), (64, 256, 8, 3), (128, 128, 8, 3), (16, 512, 4, 4))
        ],
        key=["N", "K", "BLOCK_M"],
    )
    @triton.jit
    def w8_gemv(X, W, S, Y, M, N, K, stride_xm, stride_ym, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr):  # fmt: skip
        # Y (M, N) = X (M, K) @ W^T (K, N) * S (N): each program owns BLOCK_N output channels, reads their int8
        # rows once along K, and multiplies all M (<= BLOCK_M, padded) input rows on the tensor cores
        pid = tl.program_id(0)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(X + offs_m[:, None] * stride_xm + offs_k[None, :],
                        mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)  # fmt: skip
            w = tl.load(W + offs_n[:, None] * K + offs_k[None, :],
                        mask=(offs_n[:, None] < N) & (offs_k[None, :] < K), other=0)  # fmt: skip
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        s = tl.load(S + offs_n, mask=offs_n < N, other=0.0)
        y = acc * s[None, :]
        tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :], y.to(Y.dtype.element_ty),
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))  # fmt: skip

    return w8_gemv


def int8_gemv(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (..., K) fp16/bf16 with at most GEMV_ROWS rows, q (N, K) int8, scale (N,) fp32 -> (..., N) in x's dtype."""
    import torch

    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    M, K = x2.shape
    N = q.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    kernel = _gemv_kernel()
    grid = lambda meta: ((N + meta["BLOCK_N"] - 1) // meta["BLOCK_N"],)
    kernel[grid](x2, q, scale, y, M, N, K, x2.stride(0), y.stride(0), BLOCK_M=16)
    return y.reshape(*shape[:-1], N)
