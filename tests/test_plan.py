"""plan's memory model: parameter counts against the released files, hand-computed terms, calibration."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from rwkv1c.commands.plan import plan as plan_verb
from rwkv1c.errors import UserError
from rwkv1c.machine import memory as p
from rwkv1c.model.config import ModelConfig, low_rank_sizes

GIB = 2**30
# Exact sizes of the released bf16 .pth files (Hugging Face LFS pointers): 2 bytes per parameter + pickle framing.
RELEASED_BYTES = {"rwkv7-3b": 5_895_796_446, "rwkv7-7.2b": 14_400_009_405}


@pytest.mark.parametrize("preset", sorted(RELEASED_BYTES))
def test_parameter_count_matches_released_file_size(preset: str) -> None:
    info = p.resolve_model(preset)
    assert abs(2 * info.shape.n_params - RELEASED_BYTES[preset]) / RELEASED_BYTES[preset] < 0.001


@pytest.mark.parametrize(("preset", "billions"), [("rwkv7-0.1b", 0.19), ("rwkv7-0.4b", 0.45), ("rwkv7-1.5b", 1.53)])
def test_parameter_count_matches_preset_label(preset: str, billions: float) -> None:
    assert p.resolve_model(preset).shape.n_params / 1e9 == pytest.approx(billions, abs=0.01)


def test_released_low_rank_sizes() -> None:
    assert ModelConfig(24, 1024).d_gate == 128  # the 0.4B release (not the training rule's 160)
    s = ModelConfig(32, 2560)
    assert (s.d_decay, s.d_aaa, s.d_mv, s.d_gate) == (96, 96, 64, 320)
    assert low_rank_sizes(4096) == (128, 128, 96, 480)
    assert all(x % 32 == 0 and x >= 32 for x in low_rank_sizes(3072))


def test_shape_from_checkpoint_counts_every_tensor(tiny_pth: Path) -> None:
    import torch

    shape = p.shape_from_checkpoint(tiny_pth)
    sd = torch.load(tiny_pth, weights_only=True, mmap=True)
    assert shape.n_params == sum(t.numel() for t in sd.values())
    assert (shape.n_layer, shape.n_embd, shape.d_aaa, shape.d_gate) == (2, 128, 40, 56)  # conftest's low-rank sizes


def test_hand_computed_terms_for_1_5b() -> None:
    shape = p.resolve_model("rwkv7-1.5b").shape
    c = p.Coefficients()
    est = p.estimate(shape, p.RunShape("none", 1024, 1, True, 32), c)
    assert est.terms["w_none"] == 24 * 12 * 2048**2 * 2  # r/k/v/o + ffn key/value (4C x C) in bf16
    assert est.terms["logit"] == 1024 * 65536 * c.logit_bytes
    long = p.estimate(shape, p.RunShape("none", 4096, 2, True, 32), c)
    assert long.terms["logit"] == est.terms["logit"]  # chunked cross-entropy: one 1024-position chunk alive
    assert est.terms["lora"] == 24 * 32 * (8 * 2048 + 2 * (2048 + 8192)) * 16
    assert est.terms["act"] == 1024 * 2048 * c.act_bytes  # one block recomputed at a time
    assert est.peak_gib == pytest.approx(sum(est.terms.values()) / GIB)
    assert est.device_gib == pytest.approx(est.peak_gib * c.reserve_factor + c.cuda_context_gib)


def test_quantisation_and_checkpointing_lower_the_peak() -> None:
    shape = p.resolve_model("rwkv7-3b").shape
    c = p.Coefficients()
    peaks = {q: p.estimate(shape, p.RunShape(q, 512, 1, True), c).peak_gib for q in p.QUANTS}
    assert peaks["nf4"] < peaks["int8"] < peaks["none"]
    # int8 layers keep their inputs whatever checkpointing does: at long contexts that outweighs the weights
    long = {q: p.estimate(shape, p.RunShape(q, 8192, 1, True), c) for q in p.QUANTS}
    assert long["int8"].peak_gib > long["none"].peak_gib
    assert long["int8"].terms["int8_act"] > 0 and long["nf4"].terms["int8_act"] == 0
    on = p.estimate(shape, p.RunShape("none", 4096, 1, True), c).peak_gib
    off = p.estimate(shape, p.RunShape("none", 4096, 1, False), c).peak_gib
    assert on < off / 2
    one = p.estimate(shape, p.RunShape("nf4", 1024, 1, False), c)
    two = p.estimate(shape, p.RunShape("nf4", 1024, 2, False), c)
    assert two.terms["act"] == 2 * one.terms["act"] and two.terms["w_nf4"] == one.terms["w_nf4"]


def test_host_ram_follows_the_checkpoint_size() -> None:
    c = p.Coefficients()
    small = p.make_plan("rwkv7-0.1b", "none", 512, 1, True, None, coeffs=c)
    big = p.make_plan("rwkv7-7.2b", "none", 512, 1, True, None, coeffs=c)
    assert big["estimate"]["host_ram_gib"] - small["estimate"]["host_ram_gib"] == pytest.approx(
        (14_400_009_405 - p.resolve_model("rwkv7-0.1b").checkpoint_bytes) / GIB, rel=0.01
    )


def _truth() -> p.Coefficients:
    """A made-up "real GPU": different from the first-principles prior in every fitted term."""
    return replace(
        p.Coefficients(),
        bytes_per_param={"none": 2.0, "int8": 1.15, "nf4": 0.58},
        act_bytes=165.0,
        ckpt_bytes=3.0,
        int8_act_bytes=40.0,
        logit_bytes=6.5,
        fixed_gib=0.8,
    )


def _measured(configs: list[tuple[str, str, int, int, bool]], truth: p.Coefficients, noise: float) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for preset, quant, ctx, bsz, ckpt in configs:
        shape = p.resolve_model(preset).shape
        peak = p.estimate(shape, p.RunShape(quant, ctx, bsz, ckpt), truth).peak_gib
        rows.append(
            {
                "preset": preset,
                "profile": quant,
                "ctx_len": ctx,
                "micro_bsz": bsz,
                "grad_ckpt": ckpt,
                "peak_gib": peak * (1 + rng.uniform(-noise, noise)),
            }
        )
    return rows


TRAIN = [
    (m, q, ctx, 1, ckpt)
    for m in ("rwkv7-0.4b", "rwkv7-1.5b", "rwkv7-3b")
    for q in ("none", "int8", "nf4")
    for ctx, ckpt in ((512, False), (2048, True), (1024, False), (4096, True))
]


def test_calibrate_recovers_a_measured_table() -> None:
    rows = _measured(TRAIN, _truth(), noise=0.02)
    prior = p.Coefficients()
    _, prior_err = p.compare([p.Measured.from_dict(r) for r in rows], prior)
    assert prior_err > 0.15  # the prior alone is off, so the fit has work to do
    result = p.calibrate(rows, prior)
    assert result.max_rel_err < 0.05
    assert result.coefficients.act_bytes == pytest.approx(165.0, rel=0.1)
    assert result.coefficients.bytes_per_param["none"] == 2.0  # not fitted: exact by construction
    held_out = _measured([("rwkv7-1.5b", "nf4", 8192, 2, True), ("rwkv7-0.4b", "int8", 2048, 4, False)], _truth(), 0.0)
    _, held_err = p.compare([p.Measured.from_dict(r) for r in held_out], result.coefficients)
    assert held_err < 0.1


def test_calibrate_rejects_bad_rows_and_names() -> None:
    with pytest.raises(UserError, match="lacks"):
        p.calibrate([{"preset": "rwkv7-1.5b", "profile": "none"}], p.Coefficients())
    with pytest.raises(UserError, match="no measured rows"):
        p.calibrate([], p.Coefficients())
    with pytest.raises(UserError, match="unknown coefficients"):
        p.calibrate(_measured(TRAIN[:2], _truth(), 0.0), p.Coefficients(), fit=("act", "nonsense"))


def test_saved_calibration_loads_back(tmp_path: Path) -> None:
    result = p.calibrate(_measured(TRAIN, _truth(), 0.0), p.Coefficients())
    target = tmp_path / "cal.json"
    p.save_coefficients(result, target)
    again = p.load_coefficients(target)
    assert again.act_bytes == pytest.approx(result.coefficients.act_bytes)
    assert json.loads(target.read_text())["measured"][0]["preset"] == "rwkv7-0.4b"


def test_calibrate_file_prints_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "measured.json"
    table.write_text(json.dumps({"rows": _measured(TRAIN, _truth(), 0.01)}))
    result = p.calibrate_file(table, save_to=tmp_path / "cal.json")
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == len(TRAIN) + 2 and "largest relative error" in out
    assert p.load_coefficients(tmp_path / "cal.json").logit_bytes == pytest.approx(result.coefficients.logit_bytes)


MEASURED = Path(__file__).resolve().parents[1] / "bench" / "results" / "train_vram.json"


def test_shipped_table_predicts_the_measured_gpu_peaks() -> None:
    """The shipped coefficients against the H100 measurements (0.4B, 1.5B, 2.9B x every profile) within 15%,
    and so does each row left out of a refit (the table is not just memorised)."""
    rows = [p.Measured.from_dict(r) for r in json.loads(MEASURED.read_text())["rows"]]
    assert {(r.preset, r.profile) for r in rows} >= {
        (m, q) for m in ("rwkv7-0.4b", "rwkv7-1.5b", "rwkv7-3b") for q in ("lora-bf16", "qlora-nf4", "qlora-int8")
    }
    _, err = p.compare(rows, p.load_coefficients())
    assert err <= 0.15
    for i, row in enumerate(rows):
        fit = p.calibrate(rows[:i] + rows[i + 1 :], p.Coefficients())
        _, held_out = p.compare([row], fit.coefficients)
        assert held_out <= 0.15, row


def test_shipped_table_loads_and_says_where_it_comes_from() -> None:
    c = p.load_coefficients()
    assert c.source and set(c.bytes_per_param) == set(p.QUANTS)


def test_fit_table_is_consistent_with_estimates() -> None:
    result = p.make_plan("rwkv7-1.5b", "none", 2048, 2, True, 12.0, coeffs=p.Coefficients())
    rows = result["fit_table"]
    assert {(r["quant"], r["grad_ckpt"]) for r in rows} >= {("none", True), ("nf4", False)}
    shape = p.resolve_model("rwkv7-1.5b").shape
    for r in rows:
        assert r["fits"] == (r["device_gib"] <= 12.0)
        if r["max_ctx_len_at_bsz1"]:
            run = p.RunShape(r["quant"], r["max_ctx_len_at_bsz1"], 1, r["grad_ckpt"])
            assert p.estimate(shape, run, p.Coefficients()).device_gib <= 12.0


def test_plan_from_a_checkpoint_path(tiny_pth: Path) -> None:
    result = p.make_plan(str(tiny_pth), "nf4", 256, 1, False, None, coeffs=p.Coefficients())
    assert result["n_layer"] == 2 and result["n_embd"] == 128 and result["quant"] == "nf4"


def test_profile_file_sets_quantisation_rank_and_extra_groups(tmp_path: Path) -> None:
    (tmp_path / "configs" / "profile").mkdir(parents=True)
    (tmp_path / "configs" / "profile" / "small.env").write_text(
        "QUANT=nf4\nLORA_R=16\nCTX_LEN=512\nGRAD_CKPT=true\nLORA_TARGETS=att.key,ffn.value\nTRAIN_EXTRA=head\n"
    )
    prof = p.resolve_profile("small", tmp_path)
    assert (prof.quant, prof.lora_r, prof.ctx_len, prof.grad_ckpt) == ("nf4", 16, 512, True)
    shape = p.resolve_model("rwkv7-1.5b").shape
    est = p.estimate(shape, prof.run(), p.Coefficients())
    lora = 24 * 16 * ((2048 + 2048) + (8192 + 2048))  # att.key and ffn.value only
    assert est.terms["lora"] == (lora + 65536 * 2048) * 16.0  # the head trains in fp32 with Adam
    assert p.resolve_profile("int8", tmp_path).quant == "int8"
    with pytest.raises(UserError, match="unknown profile"):
        p.resolve_profile("mystery", tmp_path)
    (tmp_path / "configs" / "profile" / "typo.env").write_text("QUANTT=nf4\n")
    with pytest.raises(UserError, match="QUANTT"):
        p.resolve_profile("typo", tmp_path)


def test_plan_rejects_bad_arguments() -> None:
    with pytest.raises(UserError) as err:
        p.make_plan("rwkv7-1.5b", "none", 0, -1, True, -3.0)
    text = str(err.value)
    assert "--ctx-len" in text and "--micro-bsz" in text and "--vram" in text
    with pytest.raises(UserError, match="unknown model"):
        p.make_plan("rwkv7-99b", "none", 512, 1, True, None)


def test_plan_verb_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    plan_verb(model="rwkv7-0.4b", profile="nf4", ctx_len=1024, micro_bsz=1, vram=8.0)
    out = capsys.readouterr().out
    assert "rwkv7-0.4b" in out and "8 GiB GPU" in out and "max ctx" in out


def test_the_shipped_calibration_is_the_refit_of_the_measured_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rwkv1c plan --refit bench/results/train_vram.json` reproduces the table the package ships."""
    import json

    measured = Path(__file__).resolve().parents[1] / "bench" / "results" / "train_vram.json"
    shipped = json.loads(p.CALIBRATION_FILE.read_text(encoding="utf-8"))
    out = tmp_path / "refit.json"
    result = p.calibrate_file(measured, save_to=out)
    refit = json.loads(out.read_text(encoding="utf-8"))
    got, want = dict(refit["coefficients"]), dict(shipped["coefficients"])
    assert got.pop("bytes_per_param") == pytest.approx(want.pop("bytes_per_param"), rel=1e-9)
    assert got.pop("source") == want.pop("source")
    assert got == pytest.approx(want, rel=1e-9)
    assert result.max_rel_err < 0.08
    printed = capsys.readouterr().out
    assert "largest relative error" in printed and printed.count("\n") >= len(refit["measured"])


def test_plan_refit_command_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--refit"):
        plan_verb(save=True)
    with pytest.raises(UserError, match="not found"):
        plan_verb(refit=tmp_path / "none.json")


def test_the_inference_plan_matches_the_measured_peaks() -> None:
    """bench/decode.py's peaks on an H200 (decode and a 4096-token prefill, per quantisation) against
    `inference_estimate`: within 10%, never below the measurement by more than 2% (a plan that says a
    model fits when it does not is the costly mistake)."""
    import json

    results = Path(__file__).resolve().parents[1] / "bench" / "results"
    sizes = {"1.5b": (ModelConfig(24, 2048), 16), "7.2b": (ModelConfig(32, 4096), 1)}
    checked = 0
    for name in ("decode_quant_1.5b.json", "decode_quant_7.2b.json"):
        for key, row in json.loads((results / name).read_text(encoding="utf-8"))["sizes"].items():
            size, _, quant = key.partition("-")
            cfg, batch = sizes[size]
            peaks = [r["peak_mem_gib"] for part in ("decode", "prefill") for r in row[part].values()]
            measured = max(peaks)
            predicted = p.inference_estimate(cfg, quant or "none", batch).peak_gib
            assert -0.02 < (predicted - measured) / measured < 0.10, (key, measured, predicted)
            checked += 1
    assert checked == 5


def test_a_graph_replayed_step_is_planned_with_its_pool() -> None:
    """CUDA_GRAPHS=auto replays 1.5B lora-bf16 at ctx 1024 and 4096 (measured 6.90 and 16.59 GiB on an H200,
    against 6.52 and 14.77 eager): the plan adds the graph's share, and only where a graph is used."""
    shape, prof, c = ModelConfig(24, 2048), p.resolve_profile("lora-bf16"), p.load_coefficients()
    for ctx, measured in ((1024, 6.90), (4096, 16.59)):
        run = prof.run(ctx, 1, False)
        assert run.graphs
        est = p.estimate(shape, run, c)
        assert "graph" in est.terms and -0.05 < (est.peak_gib - measured) / measured < 0.10
    assert not prof.run(4096, 4, False).graphs  # 16384 tokens: left to torch.compile
    assert "graph" not in p.estimate(shape, prof.run(4096, 4, False), c).terms
