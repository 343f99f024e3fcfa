"""Quantised inference: int8 (weight-only, ours) and NF4 (bitsandbytes) block linears for generate, chat,
serve and eval; adapters applied unmerged on the quantised base; the memory plan that picks one.

Bounds. Relative logit error ||q - f|| / ||f|| against the fp32 model. Weight-only int8 with a scale per
output channel rounds each weight to 1/254 of its row's largest magnitude: a few 1e-3 per matrix, a
percent or so through the layers of a random (hard) model. NF4 keeps 16 levels per 64-weight block:
about 10% per matrix on Gaussian weights, so the random model's logits move by up to ~30%.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rwkv1c.errors import UserError
from rwkv1c.model.loader import load_model
from tests.conftest import make_checkpoint

VOCAB = 512


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("quant") / "base.pth", vocab_size=VOCAB, dtype=torch.bfloat16)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def logits(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    x = torch.randint(1, VOCAB, (2, 33), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out, _ = model(x)
    return out


def test_int8_weight_rounds_each_row_to_its_own_scale() -> None:
    from rwkv1c.model.quant import int8_weight

    w = torch.randn(7, 300) * torch.logspace(-3, 1, 7)[:, None]  # rows of very different magnitudes
    q, scale = int8_weight(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and q.abs().max() == 127
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())  # at most half a step in every row


def test_int8_linear_keeps_its_scales_in_fp32_and_computes_x_times_dequantised_w() -> None:
    from rwkv1c.model.quant import int8_linear, int8_weight

    w = torch.randn(64, 96)
    lin = int8_linear(w).half()  # the model is cast: int8 weights and fp32 scales stay as they are
    assert lin.weight.dtype == torch.int8 and lin.weight_scale.dtype == torch.float32
    q, scale = int8_weight(w)
    x = torch.randn(3, 5, 96)
    got = lin.float()(x)
    assert torch.allclose(got, x @ (q.float() * scale[:, None]).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("quant", "bound"), [("int8", 0.03), ("nf4", 0.35)])
def test_quantised_logits_stay_near_full_precision(base: Path, quant: str, bound: float) -> None:
    full = logits(load_model(base, dtype=torch.float32))
    model = load_model(base, dtype=torch.float32, quant=quant)  # type: ignore[arg-type]
    key = model.blocks[0].att.key
    assert type(key).__name__ == ("Int8Linear" if quant == "int8" else "Linear4bit")
    assert isinstance(model.head, torch.nn.Linear) and model.head.weight.dtype == torch.float32  # head kept
    err = rel(logits(model), full)
    assert 0 < err < bound


def test_the_head_is_quantised_only_when_asked(base: Path) -> None:
    plain = load_model(base, dtype=torch.float32, quant="int8")
    head = load_model(base, dtype=torch.float32, quant="int8", quantize_head=True)
    assert type(plain.head).__name__ == "Linear" and type(head.head).__name__ == "Int8Linear"
    assert rel(logits(head), logits(plain)) < 0.03


def make_adapter(folder: Path, base: Path) -> Path:
    from rwkv1c.model.adapter import adapter_config, save_adapter
    from rwkv1c.model.checkpoint import file_sha256, load_checkpoint
    from rwkv1c.model.config import ModelConfig

    cfg = ModelConfig.from_state_dict(load_checkpoint(base))
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for i in range(cfg.n_layer):
        for t, (n_in, n_out) in {"att.key": (cfg.n_embd,) * 2, "ffn.key": (cfg.n_embd, cfg.dim_ffn)}.items():
            tensors[f"blocks.{i}.{t}.lora_A"] = torch.randn(8, n_in, generator=g) / n_in**0.5
            tensors[f"blocks.{i}.{t}.lora_B"] = torch.randn(n_out, 8, generator=g) * 0.05
    meta = adapter_config(
        base_path=base, base_sha256=file_sha256(base), model_config=cfg, quant="nf4", r=8, alpha=16.0,
        dropout=0.0, targets=["att.key", "ffn.key"], extra_groups=[], extra_keys=[], training={}, step=1,
    )  # fmt: skip
    save_adapter(folder, tensors, meta)
    return folder


@pytest.mark.parametrize(("quant", "bound"), [("int8", 0.03), ("nf4", 0.35)])
def test_an_adapter_on_a_quantised_base_equals_merging_then_quantising(
    base: Path, tmp_path: Path, quant: str, bound: float
) -> None:
    """A QLoRA user never needs the merged full-precision model: base + adapter unmerged on the quantised
    base is the merged model quantised, up to the quantisation of the adapter's change itself."""
    from rwkv1c.model.adapter import read_adapter_config, read_adapter_tensors
    from rwkv1c.model.checkpoint import load_checkpoint
    from rwkv1c.train.merge import merge_state_dict

    adapter = make_adapter(tmp_path / "adapter", base)
    merged_sd = merge_state_dict(load_checkpoint(base), read_adapter_tensors(adapter), read_adapter_config(adapter))
    torch.save(merged_sd, tmp_path / "merged.pth")
    reference = logits(load_model(tmp_path / "merged.pth", dtype=torch.float32))
    unmerged = logits(load_model(base, adapter, dtype=torch.float32, quant=quant))  # type: ignore[arg-type]
    merged_q = logits(load_model(tmp_path / "merged.pth", dtype=torch.float32, quant=quant))  # type: ignore[arg-type]
    assert rel(unmerged, reference) < bound and rel(merged_q, reference) < bound
    assert rel(unmerged, merged_q) < bound
    # the adapter does act: without it the quantised base is further from the merged model
    assert rel(logits(load_model(base, dtype=torch.float32, quant=quant)), reference) > rel(unmerged, reference)  # type: ignore[arg-type]


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_generate_and_eval_run_quantised_end_to_end(tiny_pth: Path, tmp_path: Path, quant: str) -> None:
    from rwkv1c.commands.eval import evaluate
    from rwkv1c.commands.generate import generate

    out = tmp_path / "out.txt"
    generate(model=tiny_pth, prompt="Процедура", max_tokens=5, temperature=0, output=out, device="cpu", quant=quant)  # type: ignore[arg-type]
    assert out.read_text(encoding="utf-8") is not None
    data = tmp_path / "val.jsonl"
    data.write_text(json.dumps({"text": "Процедура А()\nКонецПроцедуры"}, ensure_ascii=False) + "\n", encoding="utf-8")
    evaluate(model=[tiny_pth], data=data, output=tmp_path / "report", generation=False, device="cpu", quant=quant)  # type: ignore[arg-type]
    report = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert report["settings"]["quant"] == quant and report["entries"][0]["loss"]["tokens"] > 0


def test_chat_runs_quantised(
    tiny_pth: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from rwkv1c.commands.chat import chat

    monkeypatch.setattr("sys.stdin", io.StringIO("Привет\n/quit\n"))
    assert chat(model=tiny_pth, max_tokens=4, temperature=0, device="cpu", quant="int8") == 0
    captured = capsys.readouterr()
    assert "Assistant:" in captured.out and "block linears int8" in captured.err


def test_the_workspace_quant_is_the_default(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rwkv1c.machine.memory import inference_settings

    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "workspace.env").write_text("QUANT=nf4\nQUANT_HEAD=true\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert inference_settings(base, None, 1, "cpu") == ("nf4", True)
    assert inference_settings(base, "int8", 1, "cpu") == ("int8", True)  # a flag wins


def test_a_model_too_big_for_the_card_is_refused_before_loading(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check compares the memory plan with the GPU's free memory; it names a choice that fits."""
    from rwkv1c.machine import memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    need_fp16 = memory.inference_estimate(memory.shape_from_checkpoint(base), "none", 1).device_gib
    need_nf4 = memory.inference_estimate(memory.shape_from_checkpoint(base), "nf4", 1).device_gib
    free = (need_nf4 + need_fp16) / 2 * memory.GIB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (int(free), int(2 * free)))
    with pytest.raises(UserError, match="--quant none and batch 1") as info:
        memory.check_inference_fits(base, "none", 1)
    assert "use --quant" in str(info.value) and "rwkv1c plan --inference" in str(info.value)
    memory.check_inference_fits(base, "nf4", 1)  # fits: no error


def test_plan_inference_says_which_quantisation_fits_a_card(capsys: pytest.CaptureFixture[str]) -> None:
    from rwkv1c.commands.plan import plan

    plan(model="rwkv7-7.2b", inference=True, vram=12.0, json=True)
    result = json.loads(capsys.readouterr().out)
    fits = {(r["quant"], r["batch"]): r["fits"] for r in result["table"]}
    assert fits[("none", 1)] is False and fits[("int8", 1)] is True and fits[("nf4", 64)] is True
    assert result["terms_gib"]["weights"] > 10  # 7.2B in fp16: ~13 GiB of block and other weights
    plan(model="rwkv7-7.2b", inference=True, vram=12.0, quant="int8")
    text = capsys.readouterr().out
    assert "--quant int8" in text and "!" in text.split("int8")[-1]


def test_serve_runs_quantised(tiny_pth: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --quant int8`: the engine behind the API holds int8 block linears and answers requests."""
    import openai

    from rwkv1c.commands.serve import setup
    from rwkv1c.infer.api import Limits
    from rwkv1c.infer.server import ServerSettings

    limits, settings = Limits(64, 8, 64), ServerSettings(quiet=True)
    server = setup(tiny_pth, None, [], model_name="q", host="127.0.0.1", port=0, max_batch=2, device="cpu",
                   dtype="auto", quant="int8", limits=limits, settings=settings)  # fmt: skip
    assert "block linears int8" in capsys.readouterr().err
    host, port = server.start()
    try:
        client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="x", max_retries=0, timeout=60)
        done = client.completions.create(model="q", prompt="Процедура", max_tokens=4, temperature=0)
        assert done.usage is not None and done.usage.completion_tokens >= 1
    finally:
        server.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RWKV-7 trained here in full (not random: trained weights are what quantisation meets)."""
    from rwkv1c.commands.init import init
    from rwkv1c.train.loop import fit
    from rwkv1c.train.settings import resolve_run
    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("trained")
    init(root / "init.pth", n_layer=2, n_embd=128, seed=0)
    spec = resolve_run(
        model=root / "init.pth", data=REPO / "samples" / "1c-sample.jsonl", run="t", profile="full-bf16",
        preset=None, device="cpu", runs_dir=root, overrides={"MAX_STEPS": 40, "CTX_LEN": 64, "MICRO_BSZ": 4,
        "GRAD_ACCUM": 1, "LR": 3e-3, "WARMUP_STEPS": 5, "VAL_FRACTION": 0.0, "LOG_EVERY": 20, "SAVE_EVERY": 1000},
    )  # fmt: skip
    result = fit(spec)
    assert result["last_loss"] < 0.7 * result["first_loss"]
    return Path(result["model_file"])


@pytest.mark.parametrize(("quant", "bound"), [("int8", 0.01), ("nf4", 0.04)])
def test_quantised_bits_per_byte_stay_within_the_issue_s_bounds_on_a_trained_model(
    trained: Path, quant: str, bound: float
) -> None:
    """Bits per byte on 1C text: int8 within 1% of fp32, nf4 within 4% (bench/results/quant_quality.json has
    the same on a larger model trained on a real configuration)."""
    from rwkv1c.model.tokenizer import get_tokenizer
    from rwkv1c.onec.evaluate import documents_nll
    from tests.conftest import REPO

    rows = [json.loads(x) for x in (REPO / "samples" / "1c-sample.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [r["text"] for r in rows if "text" in r][:6]
    ids = [get_tokenizer().encode(t) for t in texts]
    n_bytes = sum(len(t.encode()) for t in texts)

    def bpb(model: torch.nn.Module) -> float:
        return sum(documents_nll(model, ids, chunk=256)) / n_bytes

    full = bpb(load_model(trained, dtype=torch.float32))
    quantised = bpb(load_model(trained, dtype=torch.float32, quant=quant))  # type: ignore[arg-type]
    assert abs(quantised - full) / full < bound
