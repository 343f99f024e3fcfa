"""The training path on a CUDA GPU: fla's WKV under bf16 autocast against the CPU fp32 reference path,
document packing through soft resets in fla's kernel, every profile training end to end, and a step
replayed from a CUDA graph training as the eager step does.

Tolerances. The reference is the CPU path in fp32 (chunked WKV, tested exact against the token-by-token
recurrence). Under bf16 autocast every matmul input is rounded to 8 significant bits (relative error
up to 2^-9 ~ 2e-3 per rounding) and fla's kernel keeps bf16 intermediates; over two layers of
r/k/v/o, FFN and the WKV chain the per-element error of the hidden states reaches a few 1e-3..1e-2.
The loss averages thousands of such terms, so we allow 1e-2 relative on it; gradients of the LoRA
matrices sum products of two perturbed factors, so we allow 5e-2 relative (Frobenius norm of the
difference over the norm of the reference). With a bf16 base the activations themselves stay bf16
between ops (norm outputs, the token-shift mixes, the gate), which adds one more rounding to each
factor: measured 5.2e-2 on an H100, so that case gets 8e-2. In fp32 on the GPU, Triton still multiplies in TF32
(10-bit mantissa), so fp32 gets 5e-3 on the loss and 2e-2 on gradients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv1c.model.lora import add_lora, lora_layers
from rwkv1c.model.rwkv7 import RWKV7
from rwkv1c.model.wkv import fla_available
from rwkv1c.train.loss import build_loss_module

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not fla_available(), reason="needs a CUDA GPU and flash-linear-attention (fla-core)"),
]

VOCAB = 1024


def lora_model(path: Path, device: str, dtype: torch.dtype = torch.float32) -> RWKV7:
    model = RWKV7.from_pth(path, dtype=dtype)  # bf16: the frozen base as `rwkv1c train` holds it on a GPU
    torch.manual_seed(0)
    add_lora(model, r=8, alpha=16)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            w = layer.lora_B["default"].weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.05)
    return model.to(device).train()


def packed(T: int = 700) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(1, VOCAB, (2, T), generator=g)
    reset = torch.zeros(2, T, dtype=torch.bool)
    reset[:, 0] = True
    reset[0, [100, 101, 350]] = True
    reset[1, [333]] = True
    weight = (torch.rand(2, T, generator=g) > 0.2).float()
    weight[reset] = 0.0
    return [tokens, reset, torch.roll(tokens, -1, 1), weight]


def loss_and_grads(model: RWKV7, batch: list[torch.Tensor], autocast: bool) -> tuple[float, list[torch.Tensor]]:
    device = next(model.parameters()).device
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast and device.type == "cuda"):
        loss = build_loss_module(model, grad_ckpt=False)(*[t.to(device) for t in batch])
    loss.backward()
    grads = [p.grad.detach().float().cpu() for p in model.parameters() if p.requires_grad]
    return loss.item(), grads


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("gpu") / "base.pth", vocab_size=VOCAB, dtype=torch.float32)


@pytest.mark.parametrize(
    ("base_dtype", "autocast", "loss_tol", "grad_tol"),
    [
        (torch.bfloat16, True, 1e-2, 8e-2),  # the training path: bf16 base, fp32 LoRA, bf16 autocast
        (torch.float32, True, 1e-2, 5e-2),  # fp32 parameters under autocast (TRAIN_EXTRA=time_mix has some)
        (torch.float32, False, 5e-3, 2e-2),
    ],
    ids=["bf16-base-autocast", "fp32-base-autocast", "fp32"],
)
def test_gpu_loss_and_lora_gradients_match_cpu(
    base: Path, base_dtype: torch.dtype, autocast: bool, loss_tol: float, grad_tol: float
) -> None:
    batch = packed()
    # the reference sees the same (bf16-rounded) base weights, in fp32
    ref_model = lora_model(base, "cpu", base_dtype).float()
    ref_loss, ref_grads = loss_and_grads(ref_model, batch, autocast=False)
    gpu = lora_model(base, "cuda", base_dtype)
    assert gpu.wkv_impl == "auto"
    loss, grads = loss_and_grads(gpu, batch, autocast=autocast)
    assert abs(loss - ref_loss) / abs(ref_loss) < loss_tol
    worst = max(((g - r).norm() / r.norm()).item() for g, r in zip(grads, ref_grads))
    print(f"autocast={autocast}: loss {loss:.6f} vs {ref_loss:.6f}, worst gradient rel {worst:.2e}")
    assert worst < grad_tol


def test_packed_window_on_gpu_equals_documents_alone(base: Path) -> None:
    from rwkv1c.data.documents import InMemoryDocuments
    from rwkv1c.data.packing import PackedStream

    model = RWKV7.from_pth(base, device="cuda", dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    docs = [[*torch.randint(1, VOCAB, (n,), generator=g).tolist(), 0] for n in (90, 300, 41, 200)]
    window = PackedStream(InMemoryDocuments.from_lists(docs), np.arange(4), ctx_len=635).window(0)
    batch = [torch.from_numpy(getattr(window, f)).cuda() for f in ("tokens", "reset", "targets", "weight")]
    alone = 0.0
    with torch.no_grad():
        packed_loss = build_loss_module(model, grad_ckpt=False)(*batch).item()
        for doc in docs:
            x = torch.tensor(doc, device="cuda")
            logits, _ = model(x[None, :-1])
            alone += torch.nn.functional.cross_entropy(logits[0].float(), x[1:], reduction="sum").item()
    assert packed_loss == pytest.approx(alone, rel=5e-3)


@pytest.mark.parametrize("profile", ["lora-bf16", "qlora-nf4", "qlora-int8"])
def test_every_profile_trains_on_gpu(base: Path, tmp_path: Path, profile: str) -> None:
    from rwkv1c.data.binidx import BinIdxWriter
    from rwkv1c.model.loader import load_model
    from rwkv1c.train.loop import fit
    from rwkv1c.train.settings import resolve_run as setup

    rng = np.random.default_rng(0)
    with BinIdxWriter(tmp_path / "seq") as w:
        for _ in range(24):
            start, step = int(rng.integers(1, VOCAB)), int(rng.integers(1, 4))
            w.add([(start + step * j) % (VOCAB - 1) + 1 for j in range(int(rng.integers(30, 120)))] + [0])
    spec = setup(
        model=base,
        data=tmp_path / "seq",
        run="gpu",
        profile=profile,
        preset=None,
        overrides={
            "MAX_STEPS": 30,
            "CTX_LEN": 128,
            "MICRO_BSZ": 4,
            "GRAD_ACCUM": 1,
            "LR": 1e-2,
            "WARMUP_STEPS": 0,
            "LORA_R": 8,
            "LORA_ALPHA": 16,
            "VAL_FRACTION": 0.1,
            "VAL_EVERY": 10,
            "SAVE_EVERY": 10,
        },
        device="cuda",
        runs_dir=tmp_path / "runs",
    )
    result = fit(spec)
    print(profile, result["first_loss"], result["last_loss"], result["val_loss"])
    assert result["last_loss"] < 0.7 * result["first_loss"]
    model = load_model(base, Path(result["adapter"]), device="cuda", dtype=torch.float32)
    x = torch.randint(1, VOCAB, (1, 50), device="cuda")
    with torch.no_grad():
        logits, _ = model(x)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("profile", ["lora-bf16", "qlora-nf4"])
def test_a_graph_replayed_step_trains_as_the_eager_one(base: Path, tmp_path: Path, profile: str) -> None:
    """CUDA_GRAPHS=on against off: the same losses step by step (bf16 reductions may differ in order)."""
    import json

    from rwkv1c.data.binidx import BinIdxWriter
    from rwkv1c.train.loop import fit
    from rwkv1c.train.settings import resolve_run as setup

    rng = np.random.default_rng(1)
    with BinIdxWriter(tmp_path / "seq") as w:
        for _ in range(24):
            w.add([int(t) for t in rng.integers(1, VOCAB, int(rng.integers(30, 120)))] + [0])
    losses = {}
    for graphs in ("off", "on"):
        spec = setup(
            model=base, data=tmp_path / "seq", run=f"g-{graphs}", profile=profile, preset=None,
            overrides={"MAX_STEPS": 8, "CTX_LEN": 128, "MICRO_BSZ": 2, "GRAD_ACCUM": 2, "LR": 1e-2,
                       "WARMUP_STEPS": 0, "LORA_R": 8, "LORA_ALPHA": 16, "VAL_FRACTION": 0.1, "VAL_EVERY": 4,
                       "LOG_EVERY": 1, "CUDA_GRAPHS": graphs, "COMPILE": "off"},
            device="cuda", runs_dir=tmp_path / "runs",
        )  # fmt: skip
        fit(spec)
        rows = [json.loads(x) for x in (spec.run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[graphs] = [r["loss"] for r in rows]
        log = (spec.run_dir / "train.log").read_text()
        assert ("replayed from a CUDA graph" in log) is (graphs == "on") and "CUDA graphs off" not in log
    assert len(losses["on"]) == len(losses["off"]) == 8
    for eager, graphed in zip(losses["off"], losses["on"], strict=True):
        assert graphed == pytest.approx(eager, rel=2e-2)
