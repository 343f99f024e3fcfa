"""Merging an adapter into its base: the math, the file format, the `rwkv` package, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rwkv1c.commands.merge import merge
from rwkv1c.errors import UserError
from rwkv1c.fsutil import sha256_file
from rwkv1c.model.adapter import adapter_config, save_adapter
from rwkv1c.model.checkpoint import load_checkpoint
from rwkv1c.model.loader import load_model
from rwkv1c.model.lora import adapter_tensors, add_lora, lora_layers
from rwkv1c.model.quant import quantize_block_linears
from rwkv1c.model.rwkv7 import RWKV7
from tests.conftest import make_checkpoint

TOL = 1e-4  # max |dlogits| / std(logits), fp32


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.std()).item()


def make_adapter(
    base: Path,
    folder: Path,
    *,
    r: int = 4,
    alpha: float = 12.0,
    extra: tuple[str, ...] = (),
    quant: str = "none",
    seed: int = 3,
) -> RWKV7:
    """An adapter folder with non-zero LoRA B (and perturbed extras); returns the adapted model it describes."""
    model = RWKV7.from_pth(base, dtype=torch.float32)
    quantize_block_linears(model, quant, device="cpu", compute_dtype=torch.float32)  # type: ignore[arg-type]
    keys = add_lora(model, r=r, alpha=alpha, extra=extra)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            w = layer.lora_B["default"].weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.05)
        params = dict(model.named_parameters())
        for k in keys:
            params[k].add_(0.1 * torch.randn(params[k].shape, generator=g))
    config = adapter_config(
        base_path=base,
        base_sha256=sha256_file(base),
        model_config=model.config,
        quant=quant,
        r=r,
        alpha=alpha,
        dropout=0.0,
        targets=["att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value"],
        extra_groups=list(extra),
        extra_keys=keys,
        training={},
        step=0,
    )
    save_adapter(folder, adapter_tensors(model, keys), config)
    return model.eval()


@pytest.fixture(scope="module")
def fp32_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("b") / "base.pth", vocab_size=1024, dtype=torch.float32, seed=5)


def test_merged_logits_equal_adapter_logits(fp32_base: Path, tmp_path: Path) -> None:
    make_adapter(fp32_base, tmp_path / "ad", extra=("norms",))
    out = tmp_path / "merged.pth"
    assert merge(model=fp32_base, adapter=tmp_path / "ad", output=out) == 0
    base_sd, merged_sd = load_checkpoint(fp32_base), load_checkpoint(out)
    assert list(merged_sd) == list(base_sd)
    assert all(merged_sd[k].shape == base_sd[k].shape and merged_sd[k].dtype == base_sd[k].dtype for k in base_sd)
    assert not torch.equal(merged_sd["blocks.1.att.key.weight"], base_sd["blocks.1.att.key.weight"])
    assert torch.equal(merged_sd["blocks.1.att.w1"], base_sd["blocks.1.att.w1"])  # not trained: untouched
    x = torch.randint(1, 1024, (2, 33), generator=torch.Generator().manual_seed(0))
    unmerged = load_model(fp32_base, tmp_path / "ad", dtype=torch.float32)
    merged = RWKV7.from_pth(out, dtype=torch.float32)
    with torch.no_grad():
        want, _ = unmerged(x)
        got, _ = merged(x)
        base_logits, _ = RWKV7.from_pth(fp32_base, dtype=torch.float32)(x)
    assert rel_err(got, want) <= TOL
    assert rel_err(base_logits, want) > 100 * TOL  # the adapter does change the model


def test_alpha_and_rank_come_from_the_adapter(fp32_base: Path, tmp_path: Path) -> None:
    """W' = W + (alpha / r) * B @ A with the folder's alpha: a different alpha gives a different model."""
    make_adapter(fp32_base, tmp_path / "ad", r=4, alpha=12.0)
    merge(model=fp32_base, adapter=tmp_path / "ad", output=tmp_path / "m.pth")
    from safetensors.torch import load_file

    t = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    w = load_checkpoint(fp32_base)["blocks.0.ffn.value.weight"]
    expected = w + 3.0 * t["blocks.0.ffn.value.lora_B"] @ t["blocks.0.ffn.value.lora_A"]  # 12 / 4 = 3
    assert torch.allclose(load_checkpoint(tmp_path / "m.pth")["blocks.0.ffn.value.weight"], expected, atol=1e-6)


def test_bf16_base_keeps_its_dtype_and_the_rwkv_package_loads_the_result(tiny_pth: Path, tmp_path: Path) -> None:
    make_adapter(tiny_pth, tmp_path / "ad")
    out = tmp_path / "merged.pth"
    merge(model=tiny_pth, adapter=tmp_path / "ad", output=out)
    sd = load_checkpoint(out)
    assert {v.dtype for v in sd.values()} == {torch.bfloat16}
    os.environ["RWKV_V7_ON"] = "1"  # the reference package reads this at import
    from rwkv.model import RWKV

    ref = RWKV(str(out)[: -len(".pth")], "cpu fp32")
    ours = RWKV7.from_pth(out, dtype=torch.float32)
    x = torch.randint(0, 65536, (1, 21), generator=torch.Generator().manual_seed(4))
    ref_logits, _ = ref.forward(x[0].tolist(), None, full_output=True)
    with torch.no_grad():
        logits, _ = ours(x)
    assert rel_err(logits[0], ref_logits.float()) <= TOL


def test_qlora_adapter_merges_into_the_bf16_base(fp32_base: Path, tmp_path: Path) -> None:
    trained_on = make_adapter(fp32_base, tmp_path / "ad", quant="nf4")
    out = tmp_path / "merged.pth"
    merge(model=fp32_base, adapter=tmp_path / "ad", output=out)
    x = torch.randint(1, 1024, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        merged, _ = RWKV7.from_pth(out, dtype=torch.float32)(x)
        unmerged, _ = load_model(fp32_base, tmp_path / "ad", dtype=torch.float32)(x)
        quantised, _ = trained_on(x)
    assert rel_err(merged, unmerged) <= TOL  # exact on the unquantised base
    gap = ((merged - quantised).norm() / quantised.norm()).item()
    assert 0 < gap < 0.3  # the quantisation gap: present, bounded (docs/training.md)


def test_refuses_adapter_of_another_base(fp32_base: Path, tmp_path: Path) -> None:
    make_adapter(fp32_base, tmp_path / "ad")
    other_shape = make_checkpoint(tmp_path / "wide.pth", n_embd=192, vocab_size=1024, dtype=torch.float32)
    with pytest.raises(UserError, match="another model"):
        merge(model=other_shape, adapter=tmp_path / "ad", output=tmp_path / "x.pth")
    same_shape = make_checkpoint(tmp_path / "other.pth", vocab_size=1024, dtype=torch.float32, seed=9)
    with pytest.raises(UserError, match="--force"):
        merge(model=same_shape, adapter=tmp_path / "ad", output=tmp_path / "x.pth")
    with pytest.raises(UserError, match="--force"):
        load_model(same_shape, tmp_path / "ad")
    with pytest.raises(UserError) as info:
        load_model(same_shape, tmp_path / "ad")  # generate / chat / serve / eval have no --force of their own
    assert "rwkv1c merge --force" in str(info.value.hint)
    assert not (tmp_path / "x.pth").exists()
    assert merge(model=same_shape, adapter=tmp_path / "ad", output=tmp_path / "x.pth", force=True) == 0


def test_refuses_bad_adapters_and_outputs(fp32_base: Path, tmp_path: Path) -> None:
    make_adapter(fp32_base, tmp_path / "ad")
    with pytest.raises(UserError, match="not an adapter folder"):
        merge(model=fp32_base, adapter=tmp_path, output=tmp_path / "x.pth")
    with pytest.raises(UserError, match="not found"):
        merge(model=fp32_base, adapter=tmp_path / "missing", output=tmp_path / "x.pth")
    with pytest.raises(UserError, match="is a file") as info:
        merge(model=fp32_base, adapter=tmp_path / "ad" / "adapter_model.safetensors", output=tmp_path / "x.pth")
    assert str(tmp_path / "ad") in str(info.value.hint)
    (tmp_path / "exists.pth").write_bytes(b"keep me")
    with pytest.raises(UserError, match="already exists"):
        merge(model=fp32_base, adapter=tmp_path / "ad", output=tmp_path / "exists.pth")
    assert (tmp_path / "exists.pth").read_bytes() == b"keep me"
    with pytest.raises(UserError, match="does not record its base"):  # training={}: no --model default
        merge(adapter=tmp_path / "ad", output=tmp_path / "x.pth")
    with pytest.raises(UserError, match="base checkpoint not found"):
        merge(model=tmp_path / "gone.pth", adapter=tmp_path / "ad", output=tmp_path / "x.pth")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    tensors["blocks.0.att.key.lora_B"][0, 0] = float("nan")
    save_file(tensors, str(tmp_path / "ad" / "adapter_model.safetensors"))
    with pytest.raises(UserError, match="NaN or Inf"):
        merge(model=fp32_base, adapter=tmp_path / "ad", output=tmp_path / "nan.pth")
    assert not (tmp_path / "nan.pth").exists() and not list(tmp_path.glob(".nan.pth*"))
