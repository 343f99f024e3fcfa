"""`rwkv1c train`: LoRA / QLoRA fine-tuning of an RWKV-7 checkpoint, written to runs/NAME/ (`rwkv1c.train`)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rwkv1c.train.settings import RunSpec


def train(
    *,
    model: Path | None = None,
    data: Path | None = None,
    run: str | None = None,
    profile: str | None = None,
    preset: str | None = None,
    val_data: Path | None = None,
    max_steps: int | None = None,
    epochs: int | None = None,
    ctx_len: int | None = None,
    micro_bsz: int | None = None,
    grad_accum: int | None = None,
    lr: float | None = None,
    lora_r: int | None = None,
    lora_alpha: float | None = None,
    seed: int | None = None,
    grad_ckpt: bool | None = None,
    val_every: int | None = None,
    override: tuple[str, ...] = (),
    devices: int | None = None,
    device: Literal["auto", "cuda", "cpu"] = "auto",
    runs_dir: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    wandb: str | None = None,
) -> int:
    """Fine-tune an RWKV-7 checkpoint with LoRA, QLoRA or in full; writes runs/NAME/ (adapter or model, metrics).

    Settings: the profile (configs/profile/NAME.env) over the model preset's CTX_LEN and LR, then the
    flags below; any other setting with --override KEY=VALUE (keys of the profile files). The resolved
    settings are printed and saved in runs/NAME/config.json. Ctrl-C saves a checkpoint; --resume
    continues exactly where the run stopped.

    Args:
        model: base checkpoint (.pth, official RWKV-7 x070); required unless --resume.
        data: training data: a binidx prefix from `rwkv1c prepare` (PREFIX.bin/.idx) or a .jsonl file;
            required unless --resume.
        run: run name: the folder runs/NAME (default: PROFILE-DATE-TIME).
        profile: training profile from configs/profile/ (lora-bf16, qlora-nf4, qlora-int8, full-bf16); default: PROFILE
            of configs/workspace.env.
        preset: model preset for CTX_LEN / LR defaults (default: the preset with the checkpoint's sizes).
        val_data: held-out validation data (binidx prefix or .jsonl) instead of a VAL_FRACTION of the training
            documents.
        max_steps: stop after this many optimizer steps (default: as many as --epochs take).
        epochs: passes over the training documents.
        ctx_len: tokens per training window.
        micro_bsz: windows per forward pass (per GPU).
        grad_accum: forward passes per optimizer step.
        lr: peak learning rate (warmup, then cosine decay).
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha (the update is scaled by alpha / r).
        seed: seed for the data order, the held-out split and the LoRA initialisation.
        grad_ckpt: recompute each block in the backward pass (less memory, about 30% slower).
        val_every: optimizer steps between validation passes (0: only at the end).
        override: any other setting as KEY=VALUE, e.g. WARMUP_STEPS=50, VAL_EVERY=200, TRAIN_EXTRA=norms (repeatable).
        devices: GPUs to train on (default: NUM_GPUS of configs/workspace.env); more than one launches torchrun DDP.
        device: where to train: a CUDA GPU when one is visible (auto), or force cuda / cpu.
        runs_dir: folder that holds the runs (default: RUNS_DIR of configs/workspace.env).
        resume: continue the run NAME from its latest checkpoint (settings come from its config.json).
        overwrite: delete the existing run NAME and start over.
        force: resume or train although the base checkpoint's sha256 differs from the one the run started with.
        wandb: also log to this Weights & Biases project (needs `pip install wandb`).
    """
    given = dict(locals())  # the flags named like a setting (--ctx-len: CTX_LEN, ...) override it when given
    from rwkv1c.config import TrainConfig
    from rwkv1c.train.distributed import launched_by_torchrun, rank, relaunch
    from rwkv1c.train.settings import parse_overrides, resolve_run

    overrides: dict[str, Any] = parse_overrides(override)
    for f in dataclasses.fields(TrainConfig):
        value = given.get(f.name)
        if value is not None:
            overrides[f.name.upper()] = str(value) if isinstance(value, Path) else value
    spec = resolve_run(
        model=model,
        data=data,
        run=run,
        profile=profile,
        preset=preset,
        overrides=overrides,
        device=device,
        devices=devices,
        runs_dir=runs_dir,
        resume=resume,
        overwrite=overwrite,
        force=force,
        wandb=wandb,
    )
    check_inputs(spec)
    if spec.devices > 1 and not launched_by_torchrun():
        return relaunch(spec.devices, torchrun_args(spec))
    if rank() == 0:
        from rwkv1c.config import to_env_lines

        print("settings: " + " ".join(to_env_lines(spec.cfg)), file=sys.stderr)
    from rwkv1c.train.loop import fit

    result = fit(spec)
    if "adapter" in result or "model_file" in result:
        print(f"run: {result['run_dir']}")
        if "adapter" in result:
            print(f"adapter: {result['adapter']}")
        else:
            print(f"model: {result['model_file']}")
        if result["first_loss"] is not None:
            print(f"loss: {result['first_loss']:.4f} -> {result['last_loss']:.4f} after {result['steps']} steps")
        if result["val_loss"] is not None:
            print(f"val_loss: {result['val_loss']:.4f}")
    return 0


def torchrun_args(spec: RunSpec) -> list[str]:
    """The `rwkv1c train ...` arguments that make every torchrun process resolve the same RunSpec."""
    args = [
        "train",
        "--model",
        str(spec.model),
        "--data",
        str(spec.data),
        "--run",
        spec.run_dir.name,
        "--runs-dir",
        str(spec.run_dir.parent),
        "--profile",
        spec.profile,
        "--device",
        spec.device,
        "--devices",
        str(spec.devices),
    ]
    if spec.preset:
        args += ["--preset", spec.preset]
    for f in dataclasses.fields(spec.cfg):
        value = getattr(spec.cfg, f.name)
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        args += ["--override", f"{f.name.upper()}={text}"]
    if spec.resume:
        args.append("--resume")
    if spec.overwrite:
        args.append("--overwrite")
    if spec.force:
        args.append("--force")
    if spec.wandb:
        args += ["--wandb", spec.wandb]
    return args


def check_inputs(spec: RunSpec) -> None:
    """Before anything is loaded: the step must fit in RAM when training on the CPU, and a window longer
    than the whole training set is worth a note (most of every window would be padding)."""
    from rwkv1c.data.documents import open_documents
    from rwkv1c.machine.memory import available_ram_gib, check_cpu_training_fits, shape_from_checkpoint

    cfg = spec.cfg
    if spec.device == "cpu":
        check_cpu_training_fits(shape_from_checkpoint(spec.model), cfg.ctx_len, cfg.micro_bsz, available_ram_gib())
    total = int(open_documents(spec.data).lengths().sum())
    if total < cfg.ctx_len:
        print(
            f"note: one window ({cfg.ctx_len} tokens) is longer than the whole training set ({total} tokens); "
            f"--ctx-len {max(64, 1 << (total - 1).bit_length())} wastes less",
            file=sys.stderr,
        )
