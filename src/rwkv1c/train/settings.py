"""What a training run is: its settings resolved and validated (`RunSpec`), before anything is written.

Settings compose as  TrainConfig defaults < model preset (CTX_LEN, LR) < configs/profile/<profile>.env
< flags. A resumed run takes its settings back from runs/NAME/config.json; only RESUMABLE ones may
change.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rwkv1c.config import TrainConfig
from rwkv1c.data.documents import data_exists
from rwkv1c.errors import UserError, raise_all

# settings a resumed run may change: when to stop and how often to record; everything else is fixed
RESUMABLE = {"max_steps", "epochs", "log_every", "save_every", "val_every", "keep_checkpoints"}


@dataclass(frozen=True)
class RunSpec:
    """A validated request: what to train, where to write it, with which settings."""

    model: Path
    data: Path
    run_dir: Path
    profile: str
    preset: str | None
    cfg: TrainConfig
    device: Literal["cuda", "cpu"]
    devices: int = 1
    resume: bool = False
    overwrite: bool = False
    force: bool = False
    wandb: str | None = None


def resolve_config(
    preset: str | None, profile: str, overrides: dict[str, Any], root: Path | None = None
) -> TrainConfig:
    """TrainConfig from the preset's CTX_LEN / LR, the profile file and the overrides (later wins)."""
    from rwkv1c.config import from_mapping, load_preset, load_profile

    sources: list[dict[str, Any]] = []
    if preset:
        p = load_preset(preset, root)
        sources.append({"CTX_LEN": p.ctx_len, "LR": p.lr})
    sources.append(load_profile(profile, root))
    sources.append(overrides)
    return from_mapping(TrainConfig, *sources, origin=f"training settings (profile {profile})")


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings -> mapping (validated later against TrainConfig)."""
    out, bad = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            bad.append(item)
        out[key.strip().upper()] = value.strip()
    if bad:
        raise UserError(
            f"--override expects KEY=VALUE, got: {', '.join(map(repr, bad))}", hint="e.g. --override WARMUP_STEPS=10"
        )
    return out


def saved_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no config.json: it is not a training run folder")
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def config_from_dict(values: dict[str, Any], overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """A saved run's settings (config.json), optionally with overrides on top, parsed as any settings are."""
    from rwkv1c.config import from_mapping

    fixed = {k.upper(): tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return from_mapping(TrainConfig, fixed, overrides or {}, origin="saved run config")


def resolve_run(
    *,
    model: Path | None,
    data: Path | None,
    run: str | None,
    profile: str | None,
    preset: str | None,
    overrides: dict[str, Any],
    device: Literal["auto", "cuda", "cpu"] = "auto",
    devices: int | None = None,
    runs_dir: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    wandb: str | None = None,
) -> RunSpec:
    """Resolve paths, settings and the device; report every problem at once. Writes nothing."""
    from rwkv1c.config import load_workspace, output_folder, workspace_root

    root = workspace_root()
    ws = load_workspace(root)
    problems: list[str] = []
    if resume and overwrite:
        problems.append("--resume and --overwrite exclude each other")
    kind, n_dev = _devices(device, devices, ws.num_gpus, problems)
    profile = profile or ws.profile
    name = run or f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, saved = _run_folder(name, runs_dir or output_folder(root, ws.runs_dir), resume, overwrite, problems)
    if saved is not None:
        model = model or Path(saved["model"])
        data = data or Path(saved["data"])
        profile = saved["profile"]
        preset = saved.get("preset")
        if int(saved.get("devices", 1)) != n_dev:
            problems.append(f"--resume: the run was trained on {saved.get('devices')} device(s), not {n_dev}")
    cfg: TrainConfig | None = None
    if not (resume and saved is None):  # a run that is not there says so; its base and data are unknown
        n_layer_embd = _check_inputs(model, data, problems)
        cfg, preset = _settings(saved, overrides, preset, profile, n_layer_embd, root, problems)
    raise_all(problems, "cannot start training")
    assert model is not None and data is not None and cfg is not None
    return RunSpec(
        model=Path(model).resolve(),
        data=Path(data).resolve() if Path(data).exists() else Path(data).absolute(),
        run_dir=run_dir,
        profile=profile,
        preset=preset,
        cfg=cfg,
        device=kind,
        devices=n_dev,
        resume=resume,
        overwrite=overwrite,
        force=force,
        wandb=wandb,
    )


def _devices(
    device: str, devices: int | None, num_gpus: int, problems: list[str]
) -> tuple[Literal["cuda", "cpu"], int]:
    """The device kind ("auto" resolved) and how many processes train."""
    import torch

    from rwkv1c.train.distributed import launched_by_torchrun, world_size

    kind: Literal["cuda", "cpu"] = "cpu"
    if device == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        kind = "cuda"
        if not torch.cuda.is_available():
            problems.append("--device cuda: no CUDA GPU is visible to torch (see `rwkv1c doctor`)")
    n_dev = devices if devices is not None else (num_gpus if kind == "cuda" else 1)
    if launched_by_torchrun():
        n_dev = world_size()  # started by torchrun (also across machines): its world is the truth
    if n_dev < 1:
        problems.append(f"--devices {n_dev}: must be at least 1")
    elif not launched_by_torchrun() and kind == "cuda" and n_dev > torch.cuda.device_count():
        problems.append(f"--devices {n_dev}: only {torch.cuda.device_count()} GPU(s) visible")
    return kind, n_dev


def _run_folder(
    name: str, runs: Path, resume: bool, overwrite: bool, problems: list[str]
) -> tuple[Path, dict[str, Any] | None]:
    """runs/NAME resolved, and a resumed run's saved config.json (None for a new run)."""
    from rwkv1c.train.rundir import latest_checkpoint

    if not name or "/" in name or name.startswith("."):
        problems.append(f"--run {name!r}: use a plain folder name")
    run_dir = (runs / name).resolve()
    saved: dict[str, Any] | None = None
    if resume:
        if not run_dir.is_dir():
            problems.append(f"--resume: run {name!r} does not exist ({run_dir})")
            return run_dir, None
        try:
            saved = saved_config(run_dir)
        except UserError as exc:
            problems.append(str(exc))
        if latest_checkpoint(run_dir) is None:
            problems.append(f"--resume: {run_dir} has no complete checkpoint yet; start it again with --overwrite")
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            problems.append(
                f"run {name!r} already exists ({run_dir}); pass --resume to continue it or --overwrite to start over"
            )
        elif not (run_dir / "config.json").is_file():
            problems.append(f"--overwrite: {run_dir} is not a training run folder; refusing to delete it")
    return run_dir, saved


def _check_inputs(model: Path | None, data: Path | None, problems: list[str]) -> tuple[int, int] | None:
    """The base checkpoint's (n_layer, n_embd) when it is readable; problems with either input noted."""
    from rwkv1c.model.checkpoint import load_checkpoint
    from rwkv1c.model.config import ModelConfig

    if model is None:
        problems.append("--model is required: the base checkpoint (.pth)")
    if data is None:
        problems.append("--data is required: a binidx prefix from `rwkv1c prepare`, or a .jsonl file")
    elif not data_exists(data):
        problems.append(
            f"--data {data}: not found (expected {data}.bin + {data}.idx from `rwkv1c prepare`, or a .jsonl)"
        )
    if model is None:
        return None
    try:
        cfg = ModelConfig.from_state_dict(load_checkpoint(model))
    except UserError as exc:
        problems.append(f"--model: {exc}")
        return None
    return cfg.n_layer, cfg.n_embd


def _settings(
    saved: dict[str, Any] | None,
    overrides: dict[str, Any],
    preset: str | None,
    profile: str,
    n_layer_embd: tuple[int, int] | None,
    root: Path,
    problems: list[str],
) -> tuple[TrainConfig | None, str | None]:
    """The run's TrainConfig (a resumed run's saved one, with the changes RESUMABLE allows) and its preset."""
    from rwkv1c.config import preset_matching

    cfg = None
    try:
        if saved is not None:
            # compared as parsed values: "1e-4" equals 0.0001, and "a,b" a list setting ("a", "b")
            old_cfg, cfg = config_from_dict(saved["train"]), config_from_dict(saved["train"], overrides)
            changed = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(old_cfg, f.name)}
            fixed = sorted(changed - RESUMABLE)
            if fixed:
                problems.append(
                    f"--resume continues the saved settings; these cannot change: {', '.join(fixed)} "
                    f"(only {', '.join(sorted(RESUMABLE))} can)"
                )
        else:
            if preset is None and n_layer_embd is not None:
                preset = preset_matching(*n_layer_embd, root)
            cfg = resolve_config(preset, profile, overrides, root)
    except UserError as exc:
        problems.append(str(exc))
    if cfg is not None and cfg.val_data and not data_exists(Path(cfg.val_data)):
        problems.append(f"VAL_DATA={cfg.val_data}: not found")
    return cfg, preset
