"""fla's Triton `chunk_rwkv7` against our fp32 reference WKV (GPU only).

Tolerances: with fp32 inputs Triton's `tl.dot` still multiplies in TF32 (10-bit mantissa,
~1e-3 relative per product), so we allow 5e-3 (1e-2 for gradients, which chain more products).
With bf16 inputs fla rounds intermediate products to bf16 (8 significant bits, ~4e-3 relative per
rounding) while the reference is fp32 throughout; over hundreds of steps the rounding accumulates,
so we allow 3e-2 of the output's scale (5e-2 for gradients).
"""

from __future__ import annotations

import pytest
import torch

from rwkv1c.model.wkv import fla_available, wkv_fla, wkv_reference
from tests.test_wkv import random_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not fla_available(), reason="needs a CUDA GPU and flash-linear-attention (fla-core)"),
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def to(tensors: list[torch.Tensor], dtype: torch.dtype, grad: bool = False) -> list[torch.Tensor]:
    out = []
    for i, t in enumerate(tensors):
        t = t.cuda().to(torch.float32 if i == 1 else dtype)  # the log-decay stays fp32
        out.append(t.detach().requires_grad_(grad))
    return out


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("T", [64, 300])
def test_fla_forward_and_state(dtype: torch.dtype, tol: float, T: int) -> None:
    inputs = random_inputs(2, T, 4, seed=5)
    s0 = torch.randn(2, 4, 64, 64, device="cuda") * 0.1
    x = to(inputs, dtype)
    y, s = wkv_fla(*x, state=s0)
    y_ref, s_ref = wkv_reference(*[t.float() for t in x], state=s0)
    assert rel(y, y_ref) < tol
    assert rel(s, s_ref) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_resets(dtype: torch.dtype) -> None:
    T = 200
    inputs = random_inputs(3, T, 2, seed=6)
    reset = torch.zeros(3, T, dtype=torch.bool)
    reset[0, [0, 50, 51, 130]] = True
    reset[1, [77]] = True  # row 1 continues from its initial state until token 77
    reset[2, [0, 199]] = True
    reset = reset.cuda()
    s0 = torch.randn(3, 2, 64, 64, device="cuda") * 0.1
    x = to(inputs, dtype)
    y, s = wkv_fla(*x, state=s0, reset=reset)
    y_ref, s_ref = wkv_reference(*[t.float() for t in x], state=s0, reset=reset)
    tol = 5e-3 if dtype == torch.float32 else 3e-2
    assert rel(y, y_ref) < tol
    assert rel(s, s_ref) < tol


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-2), (torch.bfloat16, 5e-2)])
def test_fla_gradients(dtype: torch.dtype, tol: float) -> None:
    T = 128
    inputs = random_inputs(2, T, 2, seed=7)
    reset = torch.zeros(2, T, dtype=torch.bool, device="cuda")
    reset[:, 0] = True
    reset[0, 60] = True
    x = to(inputs, dtype, grad=True)
    y, _ = wkv_fla(*x, reset=reset)
    weight = torch.randn(y.shape, device="cuda")
    grads = torch.autograd.grad((y.float() * weight).sum(), x)
    x_ref = [t.detach().float().requires_grad_(True) for t in x]
    y_ref, _ = wkv_reference(*x_ref, reset=reset)
    grads_ref = torch.autograd.grad((y_ref * weight).sum(), x_ref)
    for name, g, g_ref in zip(("r", "log_w", "k", "v", "a", "b"), grads, grads_ref, strict=True):
        assert torch.isfinite(g).all(), name
        assert rel(g, g_ref) < tol, (name, rel(g, g_ref))


def test_model_on_gpu_matches_cpu(tiny_pth) -> None:
    from rwkv1c.model.rwkv7 import RWKV7

    cpu = RWKV7.from_pth(tiny_pth, dtype=torch.float32)
    gpu = RWKV7.from_pth(tiny_pth, device="cuda", dtype=torch.float32)
    tokens = torch.randint(0, 65536, (2, 100), generator=torch.Generator().manual_seed(0))
    reset = torch.zeros(2, 100, dtype=torch.bool)
    reset[1, 40] = True
    with torch.no_grad():
        ref, s_ref = cpu(tokens, reset=reset)
        out, s = gpu(tokens.cuda(), reset=reset.cuda())
    assert rel(out.cpu(), ref) < 5e-3
    assert rel(s.wkv.cpu(), s_ref.wkv) < 5e-3


def test_fla_mixed_dtypes_under_autocast() -> None:
    """Autocast leaves some inputs fp32 (normalize, sigmoid of fp32 params): they run together in bf16."""
    inputs = random_inputs(1, 96, 2, seed=8)
    x = [t.cuda() for t in inputs]
    x[0] = x[0].bfloat16()  # r from a bf16 linear; the others stay fp32
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, s = wkv_fla(*x)
    y_ref, s_ref = wkv_reference(*[t.float() for t in x])
    assert y.dtype == torch.bfloat16
    assert rel(y, y_ref) < 3e-2
    assert rel(s, s_ref) < 3e-2
