"""Quantised inference on a CUDA GPU: the int8 decode kernel against its definition, and quantised models
decoding through the fused kernels and CUDA graphs as they do eagerly.

Tolerances: the kernel and its reference both multiply fp16 inputs with fp32 accumulation; they differ
in summation order only (a few 1e-3 relative at K = 4096). The graph-replayed Triton decode step against
the plain PyTorch step of the same quantised model: both round fp16 activations at different points (fused
kernels against op by op, and the int8 kernel scales after the fp32 sum where the plain path rounds the
dequantised weight to fp16 first); measured 1.5e-2 of the logits' scale on an H200, so 3e-2 (a wrong
kernel is off by O(1)).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rwkv1c.infer.fast_decode import triton_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not triton_available(), reason="needs a CUDA GPU and Triton"),
]


@pytest.mark.parametrize("rows", [1, 3, 16])
@pytest.mark.parametrize(("n", "k"), [(4096, 4096), (16384, 4096), (4096, 16384), (2048, 2048), (1000, 200)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_int8_gemv_equals_dequantised_matmul(rows: int, n: int, k: int, dtype: torch.dtype) -> None:
    from rwkv1c.model.quant import int8_gemv, int8_weight

    g = torch.Generator(device="cuda").manual_seed(rows + n)
    w = torch.randn(n, k, device="cuda", generator=g) / k**0.5
    q, scale = int8_weight(w)
    x = torch.randn(rows, k, device="cuda", generator=g).to(dtype)
    y = int8_gemv(x, q, scale)
    ref = x.float() @ (q.float() * scale[:, None]).T
    assert torch.isfinite(y).all()
    assert ((y.float() - ref).norm() / ref.norm()).item() < 4e-3


def test_int8_gemv_replays_in_a_cuda_graph() -> None:
    from rwkv1c.model.quant import int8_gemv, int8_weight

    q, scale = int8_weight(torch.randn(512, 256, device="cuda"))
    x = torch.randn(2, 256, device="cuda", dtype=torch.float16)
    int8_gemv(x, q, scale)  # autotunes outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = int8_gemv(x, q, scale)
    x.copy_(torch.randn(2, 256, device="cuda", dtype=torch.float16))
    graph.replay()
    ref = x.float() @ (q.float() * scale[:, None]).T
    assert ((y.float() - ref).norm() / ref.norm()).item() < 4e-3


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_quantised_decode_with_graphs_equals_the_plain_step(tmp_path: Path, quant: str) -> None:
    """The engine's fast path (Triton kernels, one CUDA graph per batch bucket) on a quantised model gives
    the logits of the plain PyTorch decode step of the same quantised model."""
    from rwkv1c.infer.fast_decode import FastDecoder
    from rwkv1c.model.loader import load_model
    from rwkv1c.model.rwkv7 import RWKVState
    from tests.conftest import make_checkpoint

    path = make_checkpoint(tmp_path / "m.pth", n_layer=3, n_embd=256, vocab_size=1024, low_rank=(32, 32, 32, 64))
    model = load_model(path, device="cuda", dtype=torch.float16, quant=quant)  # type: ignore[arg-type]
    fast = FastDecoder(model, kernels="triton", cuda_graphs=True)
    plain = FastDecoder(model, kernels="torch", cuda_graphs=False)
    states = [RWKVState.zeros(model.config, 4, device="cuda", dtype=torch.float16) for _ in range(2)]
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        tokens = torch.randint(1, 1024, (4,), generator=g).cuda()
        a = fast(tokens, states[0], 3).clone()
        b = plain(tokens, states[1], 3)
        assert ((a - b).abs().max() / b.std()).item() < 3e-2
