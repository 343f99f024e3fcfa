"""`rwkv1c plan`: predict the peak GPU memory and host RAM of a fine-tuning run before starting it."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Any, Literal

from rwkv1c.errors import UserError


def format_plan(result: dict[str, Any]) -> str:
    est = result["estimate"]
    lines = [
        f"model      {result['model']} ({result['parameters'] / 1e9:.2f}B parameters, "
        f"{result['n_layer']} layers x {result['n_embd']})",
        f"run        profile {result['profile']} ({result['quant']}), ctx_len {result['ctx_len']}, "
        f"micro_bsz {result['micro_bsz']}, gradient checkpointing {'on' if result['grad_ckpt'] else 'off'}, "
        + ("every parameter trained" if result.get("method") == "full" else f"LoRA r {result['lora_r']}"),
        f"GPU        peak {est['peak_gib']:.2f} GiB allocated, about {est['device_gib']:.2f} GiB on the card "
        "(with the CUDA context and torch's cache)",
    ]
    for name, value in est["terms_gib"].items():
        if value:
            lines.append(f"           {name:<22} {value:8.2f} GiB")
    lines.append(f"host RAM   about {est['host_ram_gib']:.1f} GiB to load the checkpoint")
    lines.append(f"source     coefficients: {result['coefficients_source']}")
    if result.get("vram_gib"):
        v = result["vram_gib"]
        verdict = "fits" if est["device_gib"] <= v else "does NOT fit"
        lines += ["", f"on a {v:g} GiB GPU this run {verdict}. What fits:"]
        lines.append(f"  {'profile':<14} {'ckpt':<5} {'at ask':>8}  {'max ctx (bsz 1)':>15}  {'max bsz (ctx)':>13}")
        for r in result["fit_table"]:
            mark = "" if r["fits"] else "!"
            lines.append(
                f"  {r['profile']:<14} {'on' if r['grad_ckpt'] else 'off':<5} {r['device_gib']:>7.1f}G{mark:<1} "
                f"{r['max_ctx_len_at_bsz1'] or '-':>15}  {r['max_micro_bsz_at_ctx'] or '-':>13}"
            )
        lines.append("  (! = over the card; sizes are predictions, keep a margin for the desktop's own VRAM use)")
    return "\n".join(lines)


def plan(
    *,
    model: str | None = None,
    profile: str | None = None,
    ctx_len: int | None = None,
    micro_bsz: int | None = None,
    vram: float | None = None,
    grad_ckpt: bool | None = None,
    lora_r: int | None = None,
    json: bool = False,
    refit: Path | None = None,
    save: bool = False,
    inference: bool = False,
    quant: Literal["none", "int8", "nf4"] | None = None,
    max_batch: int = 1,
) -> None:
    """Predict peak GPU memory and host RAM of a fine-tuning run, and what fits on a GPU.

    The numbers come from an analytical memory model (weights, LoRA and Adam state, activations with or
    without gradient checkpointing, logits, CUDA context) whose coefficients live in
    rwkv1c/assets/vram_calibration.json; the file says whether they are measured or first-principles.

    Args:
        model: a preset name (configs/model/) or a .pth checkpoint; default: MODEL_PRESET of the workspace.
        profile: training profile (configs/profile/) or a quantisation (none, int8, nf4); default: PROFILE.
        ctx_len: tokens per sequence; default: the profile's CTX_LEN.
        micro_bsz: sequences per step on the GPU; default: the profile's MICRO_BSZ.
        vram: GPU memory in GiB to plan for; default: GPU 0 from nvidia-smi, if there is one.
        grad_ckpt: gradient checkpointing (recompute each block in the backward pass); default: the profile's.
        lora_r: LoRA rank; default: the profile's.
        json: print JSON instead of text.
        refit: instead of planning, refit the memory model's coefficients to the measured peaks in this JSON
            file (e.g. bench/results/train_vram.json) and print measured against predicted for every row.
        save: with --refit, write the refitted coefficients as the shipped calibration table.
        inference: plan generate / chat / serve instead of training: memory by --quant and batch, and which
            quantisation fits the card.
        quant: with --inference, the quantisation to detail (default: QUANT of the workspace).
        max_batch: with --inference, the most sequences decoded together.
    """
    from rwkv1c.config import load_workspace
    from rwkv1c.machine.memory import (
        CALIBRATION_FILE,
        calibrate_file,
        detect_vram_gib,
        make_plan,
        resolve_profile,
    )

    if inference:
        print(plan_inference(model or load_workspace().model_preset, quant, max_batch, vram, json))
        return
    if save and refit is None:
        raise UserError("--save writes a refitted calibration: give --refit MEASURED.json too")
    if refit is not None:
        if not refit.is_file():
            raise UserError(f"measured peaks file not found: {refit}")
        calibrate_file(refit, save_to=CALIBRATION_FILE if save else None)
        if save:
            print(f"wrote {CALIBRATION_FILE}")
        return

    ws = load_workspace()
    prof = resolve_profile(profile or ws.profile)
    vram_gib = vram if vram is not None else detect_vram_gib()
    result = make_plan(
        model or ws.model_preset,
        prof.name,
        prof.ctx_len if ctx_len is None else ctx_len,
        prof.micro_bsz if micro_bsz is None else micro_bsz,
        prof.grad_ckpt if grad_ckpt is None else grad_ckpt,
        vram_gib,
        lora_r,
    )
    print(jsonlib.dumps(result, indent=2) if json else format_plan(result))


def plan_inference(model: str, quant: str | None, max_batch: int, vram: float | None, as_json: bool) -> str:
    """The --inference report: the chosen quantisation's terms, then every quantisation x batch."""
    from rwkv1c.config import QUANTS, load_workspace
    from rwkv1c.machine.memory import GIB, detect_vram_gib, inference_estimate, inference_table, resolve_model

    if max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {max_batch}")
    ws = load_workspace()
    chosen = quant or ws.quant
    info = resolve_model(model)
    vram_gib = vram if vram is not None else detect_vram_gib()
    est = inference_estimate(info.shape, chosen, max_batch, quant_head=ws.quant_head)  # type: ignore[arg-type]
    batches = sorted({1, 16, 64, max_batch})
    table = inference_table(info.shape, vram_gib, batches, quant_head=ws.quant_head)
    result = {
        "model": info.name,
        "quant": chosen,
        "max_batch": max_batch,
        "device_gib": round(est.device_gib, 2),
        "terms_gib": {k: round(v / GIB, 3) for k, v in est.terms.items()},
        "vram_gib": vram_gib,
        "table": table,
    }
    if as_json:
        return jsonlib.dumps(result, indent=2)
    lines = [
        f"model      {info.name} ({info.shape.n_params / 1e9:.2f}B parameters, "
        f"{info.shape.n_layer} layers x {info.shape.n_embd}), inference",
        f"GPU        about {est.device_gib:.2f} GiB on the card with --quant {chosen}, batch {max_batch}",
    ]
    lines += [f"           {k:<10} {v / GIB:8.2f} GiB" for k, v in est.terms.items()]
    header = f"  {'batch':>5}  " + "  ".join(f"{q:>8}" for q in QUANTS)
    title = f"on a {vram_gib:g} GiB GPU (! = does not fit):" if vram_gib else "GiB on the card:"
    lines += ["", title, header]
    for b in batches:
        cells = []
        for q in QUANTS:
            row = next(r for r in table if r["quant"] == q and r["batch"] == b)
            cells.append(f"{row['device_gib']:>7.1f}{'!' if row['fits'] is False else ' '}")
        lines.append(f"  {b:>5}  " + "  ".join(cells))
    return "\n".join(lines)
