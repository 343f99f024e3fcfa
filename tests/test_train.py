"""The training loop on CPU: every profile learns, only the adapter changes, packing and masking are exact,
resume is exact, the run folder is complete, and bad requests fail with one clear message."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rwkv1c.data.binidx import BinIdxWriter
from rwkv1c.errors import UserError
from rwkv1c.model.checkpoint import load_checkpoint
from rwkv1c.model.lora import lora_layers
from rwkv1c.model.rwkv7 import RWKV7
from rwkv1c.train.build import build_model, compile_blocks_for, load_base
from rwkv1c.train.loop import fit
from rwkv1c.train.loss import build_loss_module
from rwkv1c.train.settings import resolve_run as setup
from tests.conftest import make_checkpoint

VOCAB = 256
PROFILES = {"none": "lora-bf16", "nf4": "qlora-nf4", "int8": "qlora-int8"}
# small and fast: 12 short documents, windows of 32 tokens, 2 per step -> 4 steps per epoch
FAST = {
    "CTX_LEN": 32,
    "MICRO_BSZ": 2,
    "GRAD_ACCUM": 1,
    "LR": 3e-2,
    "WARMUP_STEPS": 0,
    "LORA_R": 8,
    "LORA_ALPHA": 16,
    "LOG_EVERY": 1,
    "VAL_EVERY": 0,
    "SAVE_EVERY": 1000,
    "VAL_FRACTION": 0.0,
    "GRAD_CKPT": False,
}


def write_sequences(prefix: Path, n: int, seed: int = 0, masked: bool = False) -> Path:
    """Arithmetic sequences (learnable from a few examples) as a binidx dataset."""
    rng = np.random.default_rng(seed)
    with BinIdxWriter(prefix) as w:
        for _ in range(n):
            start, step, length = int(rng.integers(1, VOCAB)), int(rng.integers(1, 4)), int(rng.integers(8, 30))
            doc = [(start + step * j) % (VOCAB - 1) + 1 for j in range(length)] + [0]
            w.add(doc, [j >= 4 for j in range(len(doc))] if masked else None)
    return prefix


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    model = make_checkpoint(root / "base.pth", n_layer=2, n_embd=64, vocab_size=VOCAB, low_rank=(16, 16, 16, 16))
    return {"model": model, "data": write_sequences(root / "seq", 12), "root": root}


def start(assets: dict[str, Path], run: str, quant: str = "none", **overrides: Any) -> Any:
    return setup(
        model=assets["model"],
        data=assets["data"],
        run=run,
        profile=PROFILES[quant],
        preset=None,
        overrides={**FAST, **{k.upper(): v for k, v in overrides.items()}},
        runs_dir=assets["root"] / "runs",
        overwrite=True,
    )


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("setting", "compiled"), [("auto", False), ("on", True), ("off", False)])
def test_compile_setting(assets: dict[str, Path], setting: str, compiled: bool) -> None:
    """COMPILE=auto compiles the blocks on a GPU only; `on` forces it (CPU too), `off` never."""
    spec = start(assets, f"compile-{setting}", compile=setting)
    assert build_model(load_base(spec.model, "fp32"), spec.cfg, "cpu")[0].compile_blocks is compiled


@pytest.mark.parametrize(
    ("setting", "device", "quant", "graphs", "compiled"),
    [
        ("auto", "cuda", "none", False, True),  # several GPUs or CUDA_GRAPHS=off: compiling cuts host time
        ("auto", "cuda", "nf4", False, True),
        ("auto", "cuda", "none", True, False),  # a replayed step has no host time left to cut
        ("auto", "cuda", "int8", False, False),  # int8 quantisation breaks the graph at every layer
        ("auto", "cpu", "none", False, False),
        ("on", "cuda", "int8", False, True),
        ("on", "cuda", "none", True, True),
        ("on", "cpu", "none", False, True),
        ("off", "cuda", "none", False, False),
    ],
)
def test_compile_auto_rule(setting: str, device: str, quant: str, graphs: bool, compiled: bool) -> None:
    assert compile_blocks_for(setting, device, quant, graphs) is compiled


def test_compile_setting_refuses_other_values(assets: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="COMPILE"):
        start(assets, "compile-bad", compile="sometimes")


@pytest.mark.parametrize("quant", ["none", "nf4", "int8"])
def test_every_profile_learns_and_changes_only_the_adapter(assets: dict[str, Path], quant: str) -> None:
    extra = ("norms",) if quant == "none" else ()
    spec = start(assets, f"learn-{quant}", quant, max_steps=12, train_extra=",".join(extra))
    initial = trained_state(build_model(load_base(spec.model, "fp32"), spec.cfg, "cpu")[0])
    result = fit(spec)
    assert result["last_loss"] < 0.75 * result["first_loss"], result  # falls clearly (6.0 -> ~4 nats)
    final = trained_state(result["model"])
    assert final.keys() == initial.keys()
    changed = {k for k in final if not torch.equal(final[k], initial[k])}
    lora = {k for k in final if ".lora_A." in k or ".lora_B." in k}
    norms = {k for k in final if "lora" not in k and any(f".{n}." in f".{k}" for n in ("ln0", "ln1", "ln2", "ln_x"))}
    norms |= {"ln_out.weight", "ln_out.bias"}
    assert changed <= lora | (norms if extra else set())
    assert lora <= changed  # every adapter matrix learnt something
    assert (norms <= changed) == bool(extra)
    if quant == "none":  # the frozen base is the checkpoint, bit for bit
        base = load_checkpoint(assets["model"])
        for k, v in final.items():
            key = k.replace(".base_layer.", ".")
            if k not in changed and key in base:
                assert torch.equal(v, base[key].float()), k


def test_run_folder_holds_everything(assets: dict[str, Path]) -> None:
    spec = start(assets, "folder", max_steps=6, val_fraction=0.25, val_every=3, save_every=2, keep_checkpoints=2)
    fit(spec)
    run = spec.run_dir
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["max_steps"] == 6 and config["profile"] == "lora-bf16" and config["total_steps"] == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all({"step", "loss", "lr", "tokens_per_s"} <= r.keys() for r in rows)
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "checkpoint checkpoints/step-000004" in (run / "train.log").read_text()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004", "step-000006"]  # keep 2
    state = torch.load(run / "checkpoints" / "step-000004" / "trainer.pt", weights_only=True)
    assert {"step", "epoch", "next_window", "optimizer", "scheduler", "rng"} <= state.keys() and state["step"] == 4
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["method"] == "lora" and adapter["quantization"] == "none"
    assert (adapter["r"], adapter["alpha"]) == (8, 16.0) and "att.key" in adapter["targets"]
    assert adapter["base"]["file"] == "base.pth" and len(adapter["base"]["sha256"]) == 64
    assert adapter["prompt_format"] == "text"  # trained on plain text rows: prompts are text to continue
    assert adapter["training"]["train"]["lr"] == 3e-2
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def adapter_of(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


def test_resume_after_ctrl_c_or_kill_equals_an_uninterrupted_run(assets: dict[str, Path]) -> None:
    # dropout on, so the restored RNG matters; 9 steps cross two epochs (4 steps each)
    common = dict(max_steps=9, save_every=3, lora_dropout=0.1, warmup_steps=2, val_fraction=0.2, val_every=4)
    whole = start(assets, "whole", **common)
    whole_result = fit(whole)

    def ctrl_c_at_5(step: int) -> None:
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # the handler finishes step 5, saves, then stops

    def killed_at_5(step: int) -> None:
        if step == 5:
            raise RuntimeError("killed")  # no chance to save: step 3 is the last checkpoint

    for name, hook, saved in (("ctrl-c", ctrl_c_at_5, 5), ("kill", killed_at_5, 3)):
        spec = start(assets, name, **common)
        with pytest.raises(KeyboardInterrupt if name == "ctrl-c" else RuntimeError):
            fit(spec, on_step=hook)
        assert sorted(p.name for p in (spec.run_dir / "checkpoints").iterdir())[-1] == f"step-{saved:06d}"
        resumed = setup(
            model=None,
            data=None,
            run=name,
            profile=None,
            preset=None,
            overrides={},
            runs_dir=assets["root"] / "runs",
            resume=True,
        )
        result = fit(resumed)
        assert result["first_loss"] == whole_result["first_loss"]  # the run's first loss, not the resumed one
        a, b = adapter_of(whole.run_dir), adapter_of(spec.run_dir)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert losses(spec.run_dir) == losses(whole.run_dir), name


def test_resume_takes_every_setting_back_as_text_and_refuses_real_changes(assets: dict[str, Path]) -> None:
    """Each torchrun process gets every setting as `--override KEY=text` (lists comma-joined): on --resume
    those equal the saved values; a resumable change applies, any other is refused."""
    spec = start(assets, "resume-text", max_steps=2, save_every=1)
    fit(spec)
    as_text = {
        f.name.upper(): ",".join(map(str, v)) if isinstance(v := getattr(spec.cfg, f.name), tuple) else str(v)
        for f in dataclasses.fields(spec.cfg)
    }
    again = dict(model=None, data=None, profile=None, preset=None, runs_dir=assets["root"] / "runs", resume=True)
    resumed = setup(run="resume-text", overrides={**as_text, "LR": "0.03", "MAX_STEPS": "4"}, **again)
    assert resumed.cfg == dataclasses.replace(spec.cfg, max_steps=4)
    with pytest.raises(UserError, match="cannot change: lora_r, lr"):
        setup(run="resume-text", overrides={"LR": "1e-3", "LORA_R": 4}, **again)


def test_several_processes_vote_on_stopping_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """With several processes every one joins the stop vote at the same steps, whatever its own flag (a rank
    that skipped the collective would leave the others waiting forever); between votes nobody stops."""
    import rwkv1c.train.loop as t
    from rwkv1c.train.distributed import DistInfo

    votes: list[tuple[int, float]] = []
    step_now = 0

    def other_rank_says_no(dist: DistInfo, values: list[float]) -> list[float]:
        votes.append((step_now, values[0]))
        return [values[0] + 0.0]

    monkeypatch.setattr(t, "distributed_sum", other_rank_says_no)
    flag, two = t.StopFlag(), DistInfo(rank=1, world=2)
    decisions = []
    for step_now in range(1, 10):
        flag.requested = step_now >= 5
        decisions.append(flag.agreed(step_now, 3, two))
    assert [s for s, _ in votes] == [3, 6, 9] and [v for _, v in votes] == [0.0, 1.0, 1.0]
    assert decisions == [False] * 5 + [True, False, False, True]
    flag.requested = True
    assert flag.agreed(7, 3, DistInfo()) is True  # one process stops at once


def test_packed_window_loss_equals_documents_run_alone(assets: dict[str, Path]) -> None:
    from rwkv1c.data.documents import InMemoryDocuments
    from rwkv1c.data.packing import PackedStream

    model = RWKV7.from_pth(assets["model"], dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    docs = [[*torch.randint(1, VOCAB, (n,), generator=g).tolist(), 0] for n in (6, 10, 4)]
    window = PackedStream(InMemoryDocuments.from_lists(docs), np.arange(3), ctx_len=23).window(0)
    batch = [torch.from_numpy(getattr(window, f)) for f in ("tokens", "reset", "targets", "weight")]
    alone = 0.0
    with torch.no_grad():
        for doc in docs:  # each document from a zero state; its first token is never a target
            x = torch.tensor(doc)
            logits, _ = model(x[None, :-1])
            alone += F.cross_entropy(logits[0].float(), x[1:], reduction="sum").item()
        for ckpt in (False, True):
            packed = build_loss_module(model, grad_ckpt=ckpt)(*batch).item()
            assert packed == pytest.approx(alone, rel=1e-5)
    assert window.n_trained == sum(len(d) - 1 for d in docs)


def test_masked_targets_get_no_gradient(assets: dict[str, Path]) -> None:
    from rwkv1c.model.lora import add_lora

    model = RWKV7.from_pth(assets["model"], dtype=torch.float32)
    add_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(0, 0.05)
    loss_module = build_loss_module(model, grad_ckpt=False)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, VOCAB, (2, 24), generator=g)
    reset = torch.zeros(2, 24, dtype=torch.bool)
    reset[:, 0] = True
    weight = (torch.rand(2, 24, generator=g) > 0.5).float()
    grads = []
    for variant in range(2):
        targets = torch.randint(1, VOCAB, (2, 24), generator=torch.Generator().manual_seed(variant))
        targets = torch.where(weight > 0, tokens, targets)  # trained targets fixed, masked ones differ
        model.zero_grad()
        loss = loss_module(tokens, reset, targets, weight)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert grads[0][0] == grads[1][0]
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))
    with torch.no_grad():
        logits, _ = model(tokens)
    plain = (F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none") * weight.flatten()).sum()
    assert grads[0][0] == pytest.approx(plain.item(), rel=1e-5)


def test_bad_requests_fail_with_every_problem_at_once(assets: dict[str, Path], tmp_path: Path) -> None:
    not_rwkv = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, not_rwkv)
    with pytest.raises(UserError) as info:
        setup(
            model=not_rwkv,
            data=tmp_path / "none",
            run="x",
            profile="lora-bf16",
            preset=None,
            overrides={},
            runs_dir=tmp_path,
        )
    text = str(info.value)
    assert "--model" in text and "RWKV-7" in text and "--data" in text and "not found" in text
    with pytest.raises(UserError, match="model file not found"):
        setup(
            model=tmp_path / "missing.pth",
            data=assets["data"],
            run="x",
            profile="lora-bf16",
            preset=None,
            overrides={},
            runs_dir=tmp_path,
        )
    with pytest.raises(UserError, match="unknown profile"):
        setup(
            model=assets["model"],
            data=assets["data"],
            run="x",
            profile="qlora-fp3",
            preset=None,
            overrides={},
            runs_dir=tmp_path,
        )
    with pytest.raises(UserError, match="LORA_R=0"):
        setup(
            model=assets["model"],
            data=assets["data"],
            run="x",
            profile="lora-bf16",
            preset=None,
            overrides={"LORA_R": 0},
            runs_dir=tmp_path,
        )
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="already exists.*--resume.*--overwrite"):
        setup(
            model=assets["model"],
            data=assets["data"],
            run="taken",
            profile="lora-bf16",
            preset=None,
            overrides={},
            runs_dir=tmp_path,
        )
    with pytest.raises(UserError, match="does not exist"):
        setup(
            model=None, data=None, run="never", profile=None, preset=None, overrides={}, runs_dir=tmp_path, resume=True
        )
    empty = tmp_path / "empty"
    BinIdxWriter(empty).finish()
    spec = setup(
        model=assets["model"], data=empty, run="e", profile="lora-bf16", preset=None, overrides=FAST, runs_dir=tmp_path
    )
    with pytest.raises(UserError, match="no documents"):
        fit(spec)


def test_a_new_run_that_fails_on_its_data_leaves_no_folder_behind(assets: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    spec = setup(
        model=assets["model"],
        data=bad,
        run="bad-data",
        profile="lora-bf16",
        preset=None,
        overrides=FAST,
        runs_dir=tmp_path / "runs",
    )
    with pytest.raises(UserError, match="malformed JSON"):
        fit(spec)
    assert not spec.run_dir.exists()  # so the same --run works once the data is fixed


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(
    assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj: Any, f: Any, *a: Any, **k: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    spec = start(assets, "disk", max_steps=6, save_every=2)
    with pytest.raises(UserError, match="No space left.*step-000002 is intact"):
        fit(spec)
    folder = spec.run_dir / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["step-000002"]
    state = torch.load(folder / "step-000002" / "trainer.pt", weights_only=True)
    assert state["step"] == 2


def test_out_of_memory_explains_what_to_lower(assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import rwkv1c.train.loss as T

    real = T.build_loss_module

    def exploding(model: torch.nn.Module, grad_ckpt: bool, **kw: Any) -> torch.nn.Module:
        module = real(model, grad_ckpt, **kw)

        def forward(*args: Any) -> torch.Tensor:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        module.forward = forward  # type: ignore[method-assign]
        return module

    monkeypatch.setattr(T, "build_loss_module", exploding)
    with pytest.raises(UserError) as info:
        fit(start(assets, "oom", max_steps=2))
    text = str(info.value)
    assert "out of memory" in text and "micro_bsz 2" in text and "ctx_len 32" in text
    assert "gradient checkpointing" in text and "--micro-bsz" in text and "NF4" in text


@pytest.mark.parametrize("head_trained", [False, True])
def test_chunked_loss_and_gradients_equal_plain_cross_entropy(
    assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch, head_trained: bool
) -> None:
    import rwkv1c.train.loss as T

    monkeypatch.setattr(T, "CE_CHUNK", 7)  # several chunks, the last one short
    model = RWKV7.from_pth(assets["model"], dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    model.ln_out.weight.requires_grad_(True)
    model.head.weight.requires_grad_(head_trained)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(1, VOCAB, (2, 16), generator=g)
    targets = torch.randint(1, VOCAB, (2, 16), generator=g)
    reset = torch.zeros(2, 16, dtype=torch.bool)
    weight = (torch.rand(2, 16, generator=g) > 0.3).float()
    loss = build_loss_module(model, grad_ckpt=False)(tokens, reset, targets, weight)
    loss.backward()
    got = [p.grad.clone() for p in (model.ln_out.weight, model.head.weight) if p.requires_grad]
    model.zero_grad()
    logits, _ = model(tokens)
    plain = (F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none") * weight.flatten()).sum()
    plain.backward()
    want = [p.grad for p in (model.ln_out.weight, model.head.weight) if p.requires_grad]
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got, want))


def run_cli(*args: str, cwd: Path | None = None) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "rwkv1c", *args], capture_output=True, text=True, cwd=cwd, timeout=600, check=False
    )


def test_cli_train_then_merge_end_to_end(tiny_pth: Path, tmp_path: Path) -> None:
    """The real commands on a tiny World-vocabulary model and the bundled 1C sample (JSONL read directly)."""
    from tests.conftest import REPO

    sample = REPO / "samples" / "1c-sample.jsonl"
    args = ["--model", str(tiny_pth), "--data", str(sample), "--runs-dir", str(tmp_path), "--run", "e2e"]
    args += ["--profile", "lora-bf16", "--max-steps", "4", "--ctx-len", "64", "--micro-bsz", "2", "--grad-accum", "1"]
    args += ["--lr", "3e-3", "--override", "WARMUP_STEPS=1", "VAL_FRACTION=0.1", "--val-every", "2"]
    done = run_cli("train", *args)
    assert done.returncode == 0, done.stderr
    assert f"adapter: {tmp_path / 'e2e' / 'adapter'}" in done.stdout and "loss: " in done.stdout
    again = run_cli("train", *args)
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
    out = tmp_path / "merged.pth"
    merged = run_cli(
        "merge", "--model", str(tiny_pth), "--adapter", str(tmp_path / "e2e" / "adapter"), "--output", str(out)
    )
    assert merged.returncode == 0, merged.stderr
    base_sd, merged_sd = load_checkpoint(tiny_pth), load_checkpoint(out)
    assert list(merged_sd) == list(base_sd)
    assert all(merged_sd[k].dtype == base_sd[k].dtype == torch.bfloat16 for k in base_sd)
    # W' = W + (alpha / r) B @ A in fp32, rounded once to the base's bf16 (the fp32 logits check is in test_merge)
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "e2e" / "adapter" / "adapter_model.safetensors"))
    config = json.loads((tmp_path / "e2e" / "adapter" / "adapter_config.json").read_text())
    assert config["scale"] == 2.0  # the profile's alpha 64 / r 32, read from the folder
    assert config["prompt_format"] == "rwkv-chat"  # the sample holds instruction rows: chat-tuned
    for key in ("blocks.0.att.receptance.weight", "blocks.1.ffn.value.weight"):
        module = key[: -len(".weight")]
        delta = adapter[f"{module}.lora_B"] @ adapter[f"{module}.lora_A"]
        assert delta.abs().max() > 0
        assert torch.equal(merged_sd[key], (base_sd[key].float() + 2.0 * delta).to(torch.bfloat16))
    rows = [json.loads(line) for line in (tmp_path / "e2e" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4]


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(assets: dict[str, Path]) -> None:
    """torchrun DDP (gloo, CPU): 2 ranks x micro-batch 1 follow the loss curve of 1 rank x micro-batch 2."""
    from rwkv1c.commands.train import train

    common = {
        "model": assets["model"],
        "data": assets["data"],
        "profile": "lora-bf16",
        "max_steps": 6,
        "grad_accum": 1,
        "lr": 3e-2,
        "device": "cpu",
        "runs_dir": assets["root"] / "runs",
        "overwrite": True,
        "override": (
            "LORA_R=8",
            "LORA_ALPHA=16",
            "CTX_LEN=32",
            "WARMUP_STEPS=0",
            "LOG_EVERY=1",
            "VAL_FRACTION=0",
            "SAVE_EVERY=3",
        ),
    }
    assert train(run="one", micro_bsz=2, devices=1, **common) == 0
    assert train(run="two", micro_bsz=1, devices=2, **common) == 0
    one, two = losses(assets["root"] / "runs" / "one"), losses(assets["root"] / "runs" / "two")
    assert [s for s, _ in one] == [s for s, _ in two] == list(range(1, 7))
    for (_, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-4)
    a, b = adapter_of(assets["root"] / "runs" / "one"), adapter_of(assets["root"] / "runs" / "two")
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)


@pytest.mark.parametrize(
    ("setting", "device", "world", "quant", "dropout", "expected"),
    [
        ("auto", "cuda", 1, "none", 0.0, True),
        ("auto", "cuda", 1, "nf4", 0.0, True),
        ("auto", "cuda", 1, "int8", 0.0, False),  # outlier columns chosen at run time
        ("auto", "cuda", 1, "none", 0.1, False),  # random masks inside recomputed blocks
        ("auto", "cuda", 2, "none", 0.0, False),  # DDP's hooks run between the backward's kernels
        ("auto", "cpu", 1, "none", 0.0, False),
        ("on", "cuda", 1, "int8", 0.0, True),
        ("off", "cuda", 1, "none", 0.0, False),
        ("on", "cpu", 1, "none", 0.0, False),
    ],
)
def test_cuda_graphs_rule(setting: str, device: str, world: int, quant: str, dropout: float, expected: bool) -> None:
    from rwkv1c.train.step import use_cuda_graphs

    assert use_cuda_graphs(setting, device, world, quant, dropout) is expected


def test_large_micro_batches_are_left_to_torch_compile() -> None:
    """Measured on an H200: replaying wins up to a few thousand tokens per micro-batch, compiled kernels
    above (4 x 4096 tokens: 40,912 tokens/s compiled against 26,654 replayed)."""
    from rwkv1c.train.build import compile_blocks_for
    from rwkv1c.train.step import use_cuda_graphs

    small = use_cuda_graphs("auto", "cuda", 1, "none", 0.0, tokens=1 * 4096)
    large = use_cuda_graphs("auto", "cuda", 1, "none", 0.0, tokens=4 * 4096)
    assert small and not large
    assert not compile_blocks_for("auto", "cuda", "none", small) and compile_blocks_for("auto", "cuda", "none", large)
    assert use_cuda_graphs("on", "cuda", 1, "none", 0.0, tokens=4 * 4096)


def test_the_loss_reads_every_position_and_weighs_untrained_ones_zero(assets: dict[str, Path]) -> None:
    """The dense loss (static shapes) equals the sum over trained positions only."""
    from rwkv1c.train.loss import build_loss_module

    model = RWKV7.from_pth(assets["model"], dtype=torch.float32)
    g = torch.Generator().manual_seed(5)
    vocab = model.config.vocab_size
    tokens = torch.randint(1, vocab, (2, 40), generator=g)
    targets = torch.randint(1, vocab, (2, 40), generator=g)
    weight = (torch.rand(2, 40, generator=g) > 0.6).float()
    reset = torch.zeros(2, 40, dtype=torch.bool)
    reset[:, 0] = True
    with torch.no_grad():
        total = build_loss_module(model, grad_ckpt=False)(tokens, reset, targets, weight)
        logits, _ = model(tokens, reset=reset)
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    assert total.item() == pytest.approx((per_token * weight.reshape(-1)).sum().item(), rel=1e-5)


def test_full_fine_tuning_trains_every_weight_resumes_exactly_and_writes_an_official_checkpoint(
    assets: dict[str, Path],
) -> None:
    """METHOD=full (the full-bf16 profile): loss falls, every tensor changes, a resumed run ends where an
    uninterrupted one ends, and runs/NAME/model.pth is a bf16 official-layout file that `rwkv` loads."""
    common = dict(max_steps=6, save_every=3, lr=3e-3, warmup_steps=1)

    def full_start(run: str) -> Any:
        return setup(
            model=assets["model"], data=assets["data"], run=run, profile="full-bf16", preset=None,
            overrides={**FAST, **{k.upper(): v for k, v in common.items()}}, runs_dir=assets["root"] / "runs",
            overwrite=True,
        )  # fmt: skip

    whole = full_start("full-whole")
    assert whole.cfg.method == "full" and whole.cfg.quant == "none"
    result = fit(whole)
    assert result["last_loss"] < result["first_loss"]
    out = Path(result["model_file"])
    assert out == whole.run_dir / "model.pth" and not (whole.run_dir / "adapter").exists()
    base_sd, tuned = load_checkpoint(assets["model"]), load_checkpoint(out)
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    assert set(tuned) == set(base_sd) - unused and all(v.dtype == torch.bfloat16 for v in tuned.values())
    unchanged = [k for k in tuned if torch.equal(tuned[k], base_sd[k])]
    assert not unchanged, f"tensors that did not train: {unchanged}"

    def stop_at_4(step: int) -> None:
        if step == 4:
            raise RuntimeError("killed")  # step 3 is the last checkpoint

    part = full_start("full-part")
    with pytest.raises(RuntimeError):
        fit(part, on_step=stop_at_4)
    resumed = setup(model=None, data=None, run="full-part", profile=None, preset=None, overrides={},
                    runs_dir=assets["root"] / "runs", resume=True)  # fmt: skip
    fit(resumed)
    again = load_checkpoint(part.run_dir / "model.pth")
    assert all(torch.equal(again[k], tuned[k]) for k in tuned)

    os.environ["RWKV_V7_ON"] = "1"  # the reference package reads this at import
    from rwkv.model import RWKV

    ref = RWKV(str(out)[: -len(".pth")], "cpu fp32")
    ours = RWKV7.from_pth(out, dtype=torch.float32)
    tokens = [5, 17, 100, 2, 9]
    ref_logits, _ = ref.forward(tokens, None)
    with torch.no_grad():
        our_logits, _ = ours(torch.tensor([tokens]))
    assert torch.allclose(ref_logits.float(), our_logits[0, -1].float(), rtol=1e-3, atol=1e-3)


def test_full_fine_tuning_refuses_a_quantised_base(assets: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="METHOD=full trains every weight"):
        setup(model=assets["model"], data=assets["data"], run="full-q", profile="full-bf16", preset=None,
              overrides={**FAST, "QUANT": "nf4"}, runs_dir=assets["root"] / "runs")  # fmt: skip
