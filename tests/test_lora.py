"""LoRA injection (exact targets), extra parameter groups, NF4 / int8 bases, adapter tensors round trip."""

from __future__ import annotations

import re

import pytest
import torch

from rwkv1c.model.lora import (
    adapter_tensors,
    add_lora,
    extra_parameter_keys,
    load_adapter_tensors,
    lora_layers,
    param_groups,
)
from rwkv1c.model.quant import quantize_block_linears
from rwkv1c.model.rwkv7 import RWKV7
from tests.conftest import random_state_dict

VOCAB = 512


def small_model(seed: int = 0) -> RWKV7:
    sd = random_state_dict(2, 128, VOCAB, seed=seed, dtype=torch.float32)
    return RWKV7.from_state_dict(sd, dtype=torch.float32)


def tokens(b: int = 2, t: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def randomise_lora(model: torch.nn.Module, seed: int = 3) -> None:
    """LoRA B starts at zero (the adapter is a no-op); make it non-trivial for tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            w = layer.lora_B["default"].weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.05)


def test_targets_are_full_module_names() -> None:
    model = small_model()
    add_lora(model, r=4, alpha=8, targets=("att.key", "ffn.value"))
    assert sorted(lora_layers(model)) == [
        "blocks.0.att.key",
        "blocks.0.ffn.value",
        "blocks.1.att.key",
        "blocks.1.ffn.value",
    ]  # ffn.key and att.value are not touched although their names end the same way
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(re.search(r"\.lora_[AB]\.", n) for n in trainable)
    a = model.blocks[0].att.key.lora_A["default"].weight
    assert a.shape == (4, 128) and a.dtype == torch.float32


def test_adapter_starts_as_identity_and_only_adapter_gets_gradients() -> None:
    base = small_model()
    model = small_model()
    add_lora(model, r=4, alpha=8)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(model(x)[0], base(x)[0])  # B = 0: same function as the base
    logits, _ = model(x, need_state=False)
    logits.float().pow(2).mean().backward()
    for name, p in model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            assert p.grad is not None
        else:
            assert p.grad is None, name
    assert len(lora_layers(model)) == 2 * 6


def test_extra_groups_select_the_right_parameters() -> None:
    model = small_model()
    keys = add_lora(model, r=4, alpha=8, extra=("norms",))
    assert set(keys) == {
        k for k in model.state_dict() if re.fullmatch(r"(blocks\.\d\.(ln\d|att\.ln_x)|ln_out)\.(weight|bias)", k)
    }
    assert all(dict(model.named_parameters())[k].requires_grad for k in keys)
    time_mix = extra_parameter_keys(model, ["time_mix"])
    assert "blocks.1.att.w1" in time_mix and "blocks.0.ffn.x_k" in time_mix and "blocks.0.att.r_k" in time_mix
    assert not any("ln" in k or "lora" in k or k.endswith("key.weight") for k in time_mix)
    assert extra_parameter_keys(model, ["emb", "head"]) == ["emb.weight", "head.weight"]
    groups = param_groups(model, weight_decay=0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]  # no decay on norms
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_adapter_tensors_round_trip() -> None:
    model = small_model()
    keys = add_lora(model, r=4, alpha=8, extra=("norms",))
    randomise_lora(model)
    with torch.no_grad():
        model.ln_out.weight.add_(0.5)
    saved = adapter_tensors(model, keys)
    assert saved["blocks.1.ffn.key.lora_B"].shape == (model.config.dim_ffn, 4)
    assert "ln_out.weight" in saved and len(saved) == 2 * 12 + len(keys)
    fresh = small_model()
    add_lora(fresh, r=4, alpha=8, extra=("norms",))
    load_adapter_tensors(fresh, saved)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], model(x)[0])
    wrong = dict(saved)
    wrong["blocks.0.att.key.lora_A"] = torch.zeros(5, 128)
    with pytest.raises(ValueError, match="size mismatch"):
        load_adapter_tensors(fresh, wrong)


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_quantised_base_runs_forward_and_backward(quant: str) -> None:
    import bitsandbytes as bnb

    reference = small_model()
    model = small_model()
    quantize_block_linears(model, quant, device="cpu", compute_dtype=torch.float32)
    layer = model.blocks[1].ffn.key
    assert isinstance(layer, bnb.nn.Linear4bit if quant == "nf4" else bnb.nn.Linear8bitLt)
    assert layer.weight.dtype == (torch.uint8 if quant == "nf4" else torch.int8)
    assert model.emb.weight.dtype == torch.float32 and model.head.weight.dtype == torch.float32
    add_lora(model, r=4, alpha=8)
    assert type(model.blocks[0].att.key).__module__ == "peft.tuners.lora.bnb"  # bitsandbytes-aware LoRA
    x = tokens()
    with torch.no_grad():
        ref, _ = reference(x)
        quantised, _ = model(x)
    # quantised weights change the function a little, not a lot (int8 less than 4-bit)
    rel = ((quantised - ref).norm() / ref.norm()).item()
    assert 0 < rel < (0.3 if quant == "nf4" else 0.1)
    randomise_lora(model)
    logits, _ = model(x, need_state=False)
    logits.float().pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)
