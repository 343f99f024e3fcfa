"""RWKV7 against the independent reference (the `rwkv` pip package), plus loading and state behaviour."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rwkv1c.errors import UserError
from rwkv1c.model.checkpoint import load_checkpoint
from rwkv1c.model.config import ModelConfig
from rwkv1c.model.rwkv7 import RWKV7, RWKVState
from tests.conftest import make_checkpoint, random_state_dict

TOL = 1e-4  # max|dlogits| / std(logits), fp32


def reference_model(path: Path):
    os.environ["RWKV_V7_ON"] = "1"  # the package reads this at import
    from rwkv.model import RWKV

    return RWKV(str(path)[: -len(".pth")], "cpu fp32")


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.std()).item()


SHAPES = [
    dict(n_layer=2, n_embd=128, low_rank=(24, 40, 16, 56), block0_v=True),
    dict(n_layer=3, n_embd=192, low_rank=(33, 17, 25, 71), block0_v=False),
    dict(n_layer=4, n_embd=128, low_rank=(64, 64, 32, 128), block0_v=True, dim_ffn=320),
]


@pytest.mark.parametrize("shape", SHAPES, ids=["c128-l2", "c192-l3-odd", "c128-l4"])
def test_parity_with_rwkv_package(tmp_path: Path, shape: dict) -> None:
    path = make_checkpoint(tmp_path / "m.pth", seed=7, **shape)
    ours = RWKV7.from_pth(path, dtype=torch.float32)
    ref = reference_model(path)
    tokens = torch.randint(0, 65536, (1, 29), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_state = ref.forward(tokens[0].tolist(), None, full_output=True)
    ref_logits = ref_logits.float()

    for impl in ("reference", "chunked"):
        ours.wkv_impl = impl  # type: ignore[assignment]
        with torch.no_grad():
            logits, state = ours(tokens)
        assert rel_err(logits[0], ref_logits) <= TOL, f"sequence mode ({impl})"
        assert state is not None
        for i in range(ours.config.n_layer):
            assert torch.allclose(state.wkv[i, 0], ref_state[3 * i + 1], atol=1e-4, rtol=1e-4)

    # recurrent mode, one token at a time
    state = None
    step_logits = []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            out, state = ours(tokens[:, t : t + 1], state)
            step_logits.append(out[0, 0])
    assert rel_err(torch.stack(step_logits), ref_logits) <= TOL

    # chunked prefill with a carried state equals one pass
    state = None
    parts = []
    with torch.no_grad():
        for lo, hi in ((0, 5), (5, 6), (6, 20), (20, 29)):
            out, state = ours(tokens[:, lo:hi], state)
            parts.append(out[0])
    assert rel_err(torch.cat(parts), ref_logits) <= TOL


def test_batched_rows_are_independent(tiny_pth: Path) -> None:
    model = RWKV7.from_pth(tiny_pth, dtype=torch.float32)
    tokens = torch.randint(0, 65536, (3, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batched, state = model(tokens)
        for b in range(3):
            single, s1 = model(tokens[b : b + 1])
            assert torch.allclose(batched[b], single[0], atol=1e-5, rtol=1e-4)
            assert torch.allclose(state.select([b]).wkv, s1.wkv, atol=1e-5)


def test_reset_equals_separate_documents(tiny_pth: Path) -> None:
    """Packing: a row holding two documents with a reset gives each document's own logits."""
    model = RWKV7.from_pth(tiny_pth, dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    doc1, doc2 = torch.randint(1, 65536, (1, 9), generator=g), torch.randint(1, 65536, (1, 14), generator=g)
    packed = torch.cat([doc1, doc2], dim=1)
    reset = torch.zeros_like(packed, dtype=torch.bool)
    reset[0, 0] = reset[0, 9] = True
    warm = model(torch.randint(0, 65536, (1, 4), generator=g))[1]  # a stale state must not leak either
    with torch.no_grad():
        out, _ = model(packed, warm, reset=reset)
        alone1, _ = model(doc1)
        alone2, _ = model(doc2)
    assert torch.allclose(out[0, :9], alone1[0], atol=1e-4, rtol=1e-4)
    assert torch.allclose(out[0, 9:], alone2[0], atol=1e-4, rtol=1e-4)


def test_state_helpers(tiny_pth: Path) -> None:
    model = RWKV7.from_pth(tiny_pth, dtype=torch.float32)
    s = model.zero_state(2)
    assert s.wkv.dtype == torch.float32 and s.wkv.shape == (2, 2, 2, 64, 64)
    _, s = model(torch.tensor([[1, 2, 3], [4, 5, 6]]), s)
    both = RWKVState.cat([s.select([1]), s.select([0])])
    assert torch.equal(both.wkv[:, 0], s.wkv[:, 1])
    c = s.clone()
    c.wkv.zero_()
    assert s.wkv.abs().sum() > 0


def test_last_only_and_bf16(tiny_pth: Path) -> None:
    model = RWKV7.from_pth(tiny_pth)  # file dtype: bf16
    assert model.emb.weight.dtype == torch.bfloat16
    tokens = torch.tensor([[10, 20, 30, 40]])
    with torch.no_grad():
        full, s_full = model(tokens)
        last, _ = model(tokens, last_only=True)
    assert last.shape == (1, 1, 65536)
    assert torch.equal(last[0, 0], full[0, -1])
    assert s_full.wkv.dtype == torch.float32


def test_config_inferred_from_shapes(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.pth", n_layer=3, n_embd=192, low_rank=(33, 17, 25, 71), dim_ffn=500)
    cfg = ModelConfig.from_state_dict(load_checkpoint(path))
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.dim_ffn) == (3, 192, 3, 65536, 500)
    assert (cfg.d_decay, cfg.d_aaa, cfg.d_mv, cfg.d_gate) == (33, 17, 25, 71)


BAD_CASES = {
    "rwkv4": ({"emb.weight": torch.zeros(4, 4), "blocks.0.att.time_first": torch.zeros(4)}, "RWKV-4"),
    "rwkv5": ({"emb.weight": torch.zeros(4, 4), "blocks.0.att.time_faaaa": torch.zeros(4)}, "RWKV-5"),
    "rwkv6": ({"emb.weight": torch.zeros(4, 4), "blocks.0.att.time_maa_x": torch.zeros(4)}, "RWKV-6"),
    "draft-x070": ({"emb.weight": torch.zeros(4, 4), "blocks.0.att.time_misc_a": torch.zeros(4)}, "pre-release"),
    "not-a-dict": ([1, 2, 3], "not a model state dict"),
    "non-tensor": ({"emb.weight": 3}, "not tensors"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_refuses_other_files(tmp_path: Path, case: str) -> None:
    obj, message = BAD_CASES[case]
    path = tmp_path / "x.pth"
    torch.save(obj, path)
    with pytest.raises(UserError, match=message):
        RWKV7.from_pth(path)


def test_refuses_deepembed_head_size_and_damage(tmp_path: Path) -> None:
    sd = random_state_dict(n_layer=2, n_embd=128)
    de = dict(sd, **{"blocks.0.ffn.s_emb.weight": torch.zeros(8, 8)})
    torch.save(de, tmp_path / "de.pth")
    with pytest.raises(UserError, match="DeepEmbed"):
        RWKV7.from_pth(tmp_path / "de.pth")

    hs = dict(sd, **{f"blocks.{i}.att.r_k": torch.zeros(4, 32) for i in range(2)})
    torch.save(hs, tmp_path / "hs.pth")
    with pytest.raises(UserError, match="head size 32"):
        RWKV7.from_pth(tmp_path / "hs.pth")

    missing = {k: v for k, v in sd.items() if k != "blocks.1.ffn.key.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(UserError, match="missing"):
        RWKV7.from_pth(tmp_path / "missing.pth")

    wrong = dict(sd, **{"blocks.1.att.key.weight": torch.zeros(128, 64)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="shapes"):
        RWKV7.from_pth(tmp_path / "wrong.pth")

    good = tmp_path / "good.pth"
    torch.save(sd, good)
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated|cannot read"):
        RWKV7.from_pth(truncated)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        RWKV7.from_pth(tmp_path / "empty.pth")
    with pytest.raises(UserError, match="not found"):
        RWKV7.from_pth(tmp_path / "nope.pth")
    with pytest.raises(UserError, match="is a folder") as info:
        RWKV7.from_pth(tmp_path)
    assert f"for example {tmp_path / 'de.pth'}" in str(info.value)  # names a .pth that is there


def test_init_checkpoint_loads_and_learns(tmp_path: Path) -> None:
    """`init` writes the official layout; a few full-parameter steps on a repeated string reduce the loss."""
    from rwkv1c.commands.init import init

    out = tmp_path / "init.pth"
    init(out, n_layer=2, n_embd=64, vocab_size=256, dtype="fp32", seed=1)
    model = RWKV7.from_pth(out).train()
    tokens = torch.arange(32).remainder(7).unsqueeze(0) + 3
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        logits, _ = model(tokens[:, :-1], need_state=False)
        loss = torch.nn.functional.cross_entropy(logits[0], tokens[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(UserError, match="exists"):
        init(out)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rwkv1c", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_init_and_inspect(tmp_path: Path) -> None:
    out = tmp_path / "tiny.pth"
    r = run_cli("init", str(out), "--n-layer", "3", "--n-embd", "128")
    assert r.returncode == 0, r.stderr
    r = run_cli("inspect", str(out), "--json")
    assert r.returncode == 0, r.stderr
    import json

    info = json.loads(r.stdout)
    assert (info["n_layer"], info["n_embd"], info["n_head"], info["vocab_size"]) == (3, 128, 2, 65536)
    assert info["dtype"] == "bfloat16"
    sd = torch.load(out, weights_only=True)
    assert info["parameters"] == sum(v.numel() for v in sd.values())
    r = run_cli("inspect", str(tmp_path / "missing.pth"))
    assert r.returncode == 1 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_activations_stay_in_model_dtype_under_autocast() -> None:
    """Under bf16 autocast every linear layer sees bf16 input: norms, sums and squares are not promoted
    to fp32 (which would double the memory traffic and add a cast before every matmul)."""
    sd = {k: v.to(torch.bfloat16) for k, v in random_state_dict(n_layer=2, vocab_size=256).items()}
    model = RWKV7.from_state_dict(sd)
    model.blocks[1].att.v0.data = model.blocks[1].att.v0.data.float()  # trained in fp32 (TRAIN_EXTRA)
    seen: list[tuple[str, torch.dtype]] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(lambda m, args, name=name: seen.append((name, args[0].dtype)))
    tokens = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    reset = torch.zeros(2, 9, dtype=torch.bool)
    reset[1, 4] = True
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden, _ = model(tokens, reset=reset, need_state=False, return_hidden=True)
    assert len(seen) == 2 * 6
    assert [n for n, dt in seen if dt != torch.bfloat16] == []
    assert hidden.dtype == torch.bfloat16


def test_fp32_parameters_train_under_autocast() -> None:
    """An fp32 model under bf16 autocast (fp32 time-mix parameters meet bf16 matmul outputs) runs
    forward and backward, and its loss stays close to the fp32 one."""
    model = RWKV7.from_state_dict(random_state_dict(n_layer=2, vocab_size=256, dtype=torch.float32)).train()
    for p in model.parameters():
        p.requires_grad_(True)
    tokens = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, _ = model(tokens, need_state=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(tokens, need_state=False)
    logits.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert rel_err(logits.float(), ref) < 0.1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_blocks_equal_eager() -> None:
    """COMPILE=on (torch.compile around the WKV operator) gives the eager outputs and gradients."""
    model = RWKV7.from_state_dict(random_state_dict(n_layer=2, vocab_size=256, dtype=torch.float32))
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    tokens = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(0))
    reset = torch.zeros(2, 21, dtype=torch.bool)
    reset[0, 8] = True

    def run(compiled: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.compile_blocks = compiled
        model.zero_grad()
        logits, _ = model(tokens, reset=reset, need_state=False)
        logits.float().square().mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager_logits, eager_grads = run(False)
    logits, grads = run(True)
    assert rel_err(logits, eager_logits) <= TOL
    assert grads.keys() == eager_grads.keys() and len(grads) == len(list(model.parameters()))
    for name, g in grads.items():
        ref = eager_grads[name]
        assert (g - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-12, name
