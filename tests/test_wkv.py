"""The chunked WKV equals the token-by-token reference: outputs, final state, resets, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from rwkv1c.model.wkv import wkv, wkv_chunked, wkv_reference


def random_inputs(B: int, T: int, H: int, N: int = 64, seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    log_w = -math.exp(-0.5) * torch.sigmoid(torch.randn(B, T, H, N, generator=g) * 3)
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
    iclr = torch.sigmoid(torch.randn(B, T, H, N, generator=g))
    tensors = [r, log_w, k, v, -kk, kk * iclr]
    if requires_grad:
        tensors = [t.clone().requires_grad_(True) for t in tensors]
    return tensors


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("T", [1, 15, 16, 37, 64])
def test_chunked_matches_reference(T: int) -> None:
    inputs = random_inputs(2, T, 3)
    s0 = torch.randn(2, 3, 64, 64) * 0.1
    y_ref, s_ref = wkv_reference(*inputs, state=s0)
    y, s = wkv_chunked(*inputs, state=s0)
    assert rel(y, y_ref) < 1e-5
    assert rel(s, s_ref) < 1e-5


def test_resets_cut_documents() -> None:
    """A reset in the middle of a row gives the same outputs as running the two documents alone."""
    T, cut = 40, 23
    inputs = random_inputs(1, T, 2, seed=1)
    reset = torch.zeros(1, T, dtype=torch.bool)
    reset[0, cut] = True
    reset[0, 0] = True
    s0 = torch.randn(1, 2, 64, 64)
    for impl in (wkv_reference, wkv_chunked):
        y, s = impl(*inputs, state=s0, reset=reset)
        y1, _ = wkv_reference(*[t[:, :cut] for t in inputs])
        y2, s2 = wkv_reference(*[t[:, cut:] for t in inputs])
        assert rel(y[:, :cut], y1) < 1e-5, impl.__name__
        assert rel(y[:, cut:], y2) < 1e-5, impl.__name__
        assert rel(s, s2) < 1e-5, impl.__name__


def test_reset_at_chunk_boundaries_and_consecutive() -> None:
    T = 48
    inputs = random_inputs(2, T, 1, seed=2)
    reset = torch.zeros(2, T, dtype=torch.bool)
    reset[0, [16, 17, 31, 32]] = True
    reset[1, [1, 47]] = True
    s0 = torch.randn(2, 1, 64, 64)
    y_ref, s_ref = wkv_reference(*inputs, state=s0, reset=reset)
    y, s = wkv_chunked(*inputs, state=s0, reset=reset)
    assert rel(y, y_ref) < 1e-5
    assert rel(s, s_ref) < 1e-5


def test_gradients_match_reference() -> None:
    inputs = random_inputs(1, 21, 2, seed=3, requires_grad=True)
    reset = torch.zeros(1, 21, dtype=torch.bool)
    reset[0, 9] = True
    y_ref, s_ref = wkv_reference(*inputs, reset=reset)
    weight = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad((y_ref * weight).sum() + s_ref.sum(), inputs)
    y, s = wkv_chunked(*inputs, reset=reset)
    grads = torch.autograd.grad((y * weight).sum() + s.sum(), inputs)
    for name, g, g_ref in zip(("r", "log_w", "k", "v", "a", "b"), grads, grads_ref, strict=True):
        assert rel(g, g_ref) < 1e-4, name
        assert torch.isfinite(g).all(), name


def test_dispatch_rejects_unknown_impl() -> None:
    with pytest.raises(ValueError, match="unknown WKV"):
        wkv(*random_inputs(1, 2, 1), impl="nope")  # type: ignore[arg-type]


def test_compute_dtype_for_mixed_inputs() -> None:
    """fla needs one dtype: mixed bf16 / fp32 inputs (autocast, quantised layers) run in bf16."""
    from rwkv1c.model.wkv import _compute_dtype

    f32, bf16 = torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16)
    assert _compute_dtype(f32, f32) == torch.float32
    assert _compute_dtype(f32, bf16, f32) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _compute_dtype(f32, f32) == torch.bfloat16


def fake_chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None):
    """A CPU stand-in with fla's documented contract: (B, T, H, K) inputs, `w` the log decay, states
    (N, H, K, V) (the transpose of ours). The wrapper must never need varlen segments."""
    assert scale == 1.0 and cu_seqlens is None
    s0 = None if initial_state is None else initial_state.transpose(-1, -2)
    y, s = wkv_reference(r, w, k, v, a, b, state=s0)
    return y, s.transpose(-1, -2)


def test_fla_wrapper_resets_and_states(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our wrapper around fla (dtype, state transpose, document resets as soft resets, per-row initial and
    final states) checked on the CPU against the reference, through a stand-in with fla's contract."""
    import sys
    import types

    from rwkv1c.model.wkv import wkv_fla

    module = types.ModuleType("fla.ops.rwkv7")
    module.chunk_rwkv7 = fake_chunk_rwkv7  # type: ignore[attr-defined]
    for name in ("fla", "fla.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "fla.ops.rwkv7", module)

    T = 30
    inputs = random_inputs(3, T, 2, seed=9)
    s0 = torch.randn(3, 2, 64, 64)
    reset = torch.zeros(3, T, dtype=torch.bool)
    reset[0, [0, 11]] = True
    reset[1, [5, 6, 29]] = True  # row 1 continues its initial state for 5 tokens
    y_ref, s_ref = wkv_reference(*inputs, state=s0, reset=reset)
    y, s = wkv_fla(*inputs, state=s0, reset=reset)
    assert rel(y, y_ref) < 1e-5 and rel(s, s_ref) < 1e-5
    y, s = wkv_fla(*inputs, state=s0)
    y_ref, s_ref = wkv_reference(*inputs, state=s0)
    assert rel(y, y_ref) < 1e-5 and rel(s, s_ref) < 1e-5


def test_auto_resolves_once_to_a_concrete_kernel() -> None:
    from rwkv1c.model.wkv import resolve_impl

    assert resolve_impl("auto", False, 5) == "chunked" and resolve_impl("auto", False, 1) == "reference"
    assert resolve_impl("reference", True, 5) == "reference" and resolve_impl("fla", False, 5) == "fla"


def test_soft_reset_equals_a_true_reset_with_its_gradients() -> None:
    """What fla is given instead of segments: decay ~0 and no removal term where a document starts. The
    outputs, the final state and every input gradient equal those of zeroing the state there."""
    from rwkv1c.model.wkv import soft_reset

    T = 40
    reset = torch.zeros(2, T, dtype=torch.bool)
    reset[0, [0, 9, 10, 33]] = True
    reset[1, [17]] = True  # row 1 continues its initial state until token 17
    s0 = torch.randn(2, 2, 64, 64, generator=torch.Generator().manual_seed(3)) * 0.1
    weights = torch.randn(2, T, 2, 64, generator=torch.Generator().manual_seed(4))
    results = []
    for soft in (False, True):
        x = random_inputs(2, T, 2, seed=9, requires_grad=True)
        r, log_w, k, v, a, b = x
        if soft:
            log_w, a = soft_reset(log_w, a, reset)
            y, s = wkv_reference(r, log_w, k, v, a, b, state=s0)
        else:
            y, s = wkv_reference(r, log_w, k, v, a, b, state=s0, reset=reset)
        ((y * weights).sum() + s.square().sum()).backward()
        results.append((y.detach(), s.detach(), [t.grad for t in x]))
    (y0, s0_, g0), (y1, s1, g1) = results
    assert rel(y1, y0) < 1e-6 and rel(s1, s0_) < 1e-6
    for hard_grad, soft_grad in zip(g0, g1, strict=True):
        assert rel(soft_grad, hard_grad) < 1e-6
