"""The GPU decode path: fused Triton step and CUDA graphs against the PyTorch step and model.forward.

fp32 weights: the Triton step must agree with model.forward to fp32 rounding (both keep the WKV state
in fp32; matmuls are cuBLAS fp32). The reference forward uses the exact chunked WKV, not fla's kernel,
which multiplies fp32 in TF32. fp16 / bf16 weights: both paths round differently, so each is
compared with the fp32 model and must be no further from it than the plain PyTorch step in the same
dtype (times 2, plus a small floor).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rwkv1c.infer.fast_decode import FastDecoder, decode_step_torch, triton_available
from rwkv1c.model.rwkv7 import RWKV7
from tests.conftest import make_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not triton_available(), reason="needs a CUDA GPU and Triton"),
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("gpu") / "m.pth", n_layer=3, n_embd=256, low_rank=(32, 64, 32, 64))


def run_steps(model: RWKV7, tokens: torch.Tensor, how: str, capacity: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    B, T = tokens.shape
    st = model.zero_state(capacity)
    dec = None if how == "torch" else FastDecoder(model, kernels="triton", cuda_graphs=how == "graphs")
    out = []
    for t in range(T):
        if dec is None:
            out.append(decode_step_torch(model, tokens[:, t], st.att_shift[:, :B], st.ffn_shift[:, :B], st.wkv[:, :B]))
        else:
            out.append(dec(tokens[:, t], st, B).clone())
    return torch.stack(out, 1), st.wkv[:, :B].clone()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().std()).item()


def test_triton_step_fp32_matches_forward(ckpt: Path) -> None:
    model = RWKV7.from_pth(ckpt, device="cuda", dtype=torch.float32)
    model.wkv_impl = "chunked"
    tokens = torch.randint(0, 65536, (5, 9), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with torch.no_grad():
        ref, ref_state = model(tokens)
    for how in ("torch", "triton", "graphs"):
        logits, wkv = run_steps(model, tokens, how)
        assert rel(logits, ref) < 1e-4, how
        assert torch.allclose(wkv, ref_state.wkv, atol=1e-4, rtol=1e-3), how


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_step_half_precision(ckpt: Path, dtype: torch.dtype) -> None:
    truth_model = RWKV7.from_pth(ckpt, device="cuda", dtype=torch.float32)
    truth_model.wkv_impl = "chunked"
    model = RWKV7.from_pth(ckpt, device="cuda", dtype=dtype)
    tokens = torch.randint(0, 65536, (4, 8), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    with torch.no_grad():
        truth, _ = truth_model(tokens)
    plain, _ = run_steps(model, tokens, "torch")
    fused, _ = run_steps(model, tokens, "graphs")
    assert torch.isfinite(fused).all()
    assert rel(fused, truth) <= 2 * rel(plain, truth) + 1e-2


def test_graph_rows_beyond_bucket_untouched(ckpt: Path) -> None:
    """n = 3 runs the bucket of 4 rows; rows 4.. of the slot state are never written; replays repeat."""
    model = RWKV7.from_pth(ckpt, device="cuda", dtype=torch.float16)
    st = model.zero_state(16)
    st.wkv.normal_()
    start = st.clone()
    dec = FastDecoder(model, cuda_graphs=True)
    assert dec.bucket(3, 16) == 4
    tok = torch.tensor([5, 6, 7], device="cuda")
    first = dec(tok, st, 3).clone()
    assert torch.equal(st.wkv[:, 4:], start.wkv[:, 4:])
    assert not torch.equal(st.wkv[:, :3], start.wkv[:, :3])
    for mine, orig in zip((st.att_shift, st.ffn_shift, st.wkv), (start.att_shift, start.ffn_shift, start.wkv)):
        mine.copy_(orig)  # same buffers (the graph is bound to them), start values again
    assert torch.equal(dec(tok, st, 3), first)


def test_engine_on_gpu_matches_cpu(ckpt: Path) -> None:
    pytest.importorskip("rwkv1c.tokenizer")
    from rwkv1c.infer.engine import Engine
    from rwkv1c.infer.sampling import SamplingParams
    from rwkv1c.model.tokenizer import get_tokenizer

    prompts = [[11, 22, 33], list(range(100, 140)), [7]]
    params = SamplingParams(max_tokens=10, temperature=0, stop_at_blank_line=False, stop_token_ids=())
    cpu = Engine(RWKV7.from_pth(ckpt, dtype=torch.float32), get_tokenizer(), max_batch=4)
    gpu_model = RWKV7.from_pth(ckpt, device="cuda", dtype=torch.float32)
    gpu_model.wkv_impl = "chunked"  # exact fp32 prefill (fla's kernel multiplies fp32 in TF32)
    gpu = Engine(gpu_model, get_tokenizer(), max_batch=4)
    assert gpu.decoder.cuda_graphs and gpu.decoder.kernels == "triton"
    want = [c.token_ids for c in cpu.generate(prompts, params)]
    got = [c.token_ids for c in gpu.generate(prompts, params)]
    assert got == want
