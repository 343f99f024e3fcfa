"""`rwkv1c train`: LoRA / QLoRA fine-tuning of an RWKV-7 checkpoint, written to `runs/NAME/`.

Settings compose as  TrainConfig defaults < model preset (CTX_LEN, LR) < configs/profile/<profile>.env
< flags. The loop reads top to bottom in `fit()`:

    data      documents -> seeded shuffle per epoch -> packed ctx_len windows (rwkv1c.data)
    model     base (bf16 on GPU, fp32 on CPU) -> optional NF4 / int8 block linears -> LoRA (rwkv1c.lora)
    step      grad_accum micro-batches -> loss = sum of trained-token cross-entropies / trained tokens
              of the whole step (over every GPU) -> clip -> AdamW -> warmup + cosine lr
    record    metrics.jsonl, train.log, loss.png, checkpoints/step-N/ (adapter + optimizer + RNG +
              data position), adapter/ at the end

A run killed and resumed with --resume ends where an uninterrupted run ends: the data order and
every window are a pure function of (seed, step), and a checkpoint holds everything else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rwkv1c.config import TrainConfig, load_profile
from rwkv1c.errors import UserError, raise_all
from rwkv1c.plan import CE_CHUNK  # positions per cross-entropy chunk (the memory plan counts the same)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rwkv1c.data import Batch
    from rwkv1c.distributed import DistInfo
    from rwkv1c.model import RWKV7

CHECKPOINT_PREFIX = "step-"
# settings a resumed run may change: when to stop and how often to record; everything else is fixed
RESUMABLE = {"max_steps", "epochs", "log_every", "save_every", "val_every", "keep_checkpoints"}


# ---------------------------------------------------------------------------------------------- settings


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


def preset_for(n_layer: int, n_embd: int, root: Path | None = None) -> str | None:
    """The model preset with these sizes (configs/model/*.env), if exactly one matches."""
    from rwkv1c.config import load_presets

    matches = [p.name for p in load_presets(root) if (p.n_layer, p.n_embd) == (n_layer, n_embd)]
    return matches[0] if len(matches) == 1 else None


def resolve_config(
    preset: str | None, profile: str, overrides: dict[str, Any], root: Path | None = None
) -> TrainConfig:
    """TrainConfig from the preset's CTX_LEN / LR, the profile file and the overrides (later wins)."""
    from rwkv1c.config import from_mapping, load_preset

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


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoint folders, oldest first (a half-written one is never renamed into place)."""
    folder = run_dir / "checkpoints"
    return sorted(p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / "trainer.pt").is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def setup(
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
    import torch

    from rwkv1c.config import load_workspace, output_folder, workspace_root
    from rwkv1c.model import ModelConfig, load_checkpoint

    root = workspace_root()
    ws = load_workspace(root)
    problems: list[str] = []
    if resume and overwrite:
        problems.append("--resume and --overwrite exclude each other")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        problems.append("--device cuda: no CUDA GPU is visible to torch (see `rwkv1c doctor`)")
    n_dev = devices if devices is not None else (ws.num_gpus if device == "cuda" else 1)
    from rwkv1c.distributed import launched_by_torchrun, world_size

    if launched_by_torchrun():
        n_dev = world_size()  # started by torchrun (also across machines): its world is the truth
    if n_dev < 1:
        problems.append(f"--devices {n_dev}: must be at least 1")
    elif not launched_by_torchrun() and device == "cuda" and n_dev > torch.cuda.device_count():
        problems.append(f"--devices {n_dev}: only {torch.cuda.device_count()} GPU(s) visible")
    runs = runs_dir or output_folder(root, ws.runs_dir)
    profile = profile or ws.profile
    name = run or f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not name or "/" in name or name.startswith("."):
        problems.append(f"--run {name!r}: use a plain folder name")
    run_dir = (runs / name).resolve()

    saved: dict[str, Any] | None = None
    if resume:
        if not run_dir.is_dir():
            problems.append(f"--resume: run {name!r} does not exist ({run_dir})")
        else:
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

    if saved is not None:
        model = model or Path(saved["model"])
        data = data or Path(saved["data"])
        profile = saved["profile"]
        preset = saved.get("preset")
    if model is None:
        problems.append("--model is required: the base checkpoint (.pth)")
    if data is None:
        problems.append("--data is required: a binidx prefix from `rwkv1c prepare`, or a .jsonl file")
    model_config = None
    if model is not None:
        try:
            model_config = ModelConfig.from_state_dict(load_checkpoint(model))
        except UserError as exc:
            problems.append(f"--model: {exc}")
    if data is not None and not _data_exists(data):
        problems.append(
            f"--data {data}: not found (expected {data}.bin + {data}.idx from `rwkv1c prepare`, or a .jsonl)"
        )

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
            if preset is None and model_config is not None:
                preset = preset_for(model_config.n_layer, model_config.n_embd, root)
            cfg = resolve_config(preset, profile, overrides, root)
    except UserError as exc:
        problems.append(str(exc))
    if cfg is not None and cfg.val_data and not _data_exists(Path(cfg.val_data)):
        problems.append(f"VAL_DATA={cfg.val_data}: not found")
    if saved is not None and int(saved.get("devices", 1)) != n_dev:
        problems.append(f"--resume: the run was trained on {saved.get('devices')} device(s), not {n_dev}")
    raise_all(problems, "cannot start training")
    assert model is not None and data is not None and cfg is not None
    return RunSpec(
        model=Path(model).resolve(),
        data=Path(data).resolve() if Path(data).exists() else Path(data).absolute(),
        run_dir=run_dir,
        profile=profile,
        preset=preset,
        cfg=cfg,
        device=device,
        devices=n_dev,
        resume=resume,
        overwrite=overwrite,
        force=force,
        wandb=wandb,
    )


def _data_exists(path: Path) -> bool:
    from rwkv1c.data import data_exists

    return data_exists(path)


# ---------------------------------------------------------------------------------------------- model + loss


def _ce_sum(h: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    logits = F.linear(h, head).float()  # (n, V) fp32
    return (F.cross_entropy(logits, targets, reduction="none") * weight).sum()


@functools.cache
def _frozen_head_ce() -> Any:
    """An autograd function: weighted CE sum through a frozen head, its input gradient made in forward.

    d loss / d logits = (softmax - onehot) * weight is known as soon as the logits are, so the forward
    pass turns it into d loss / d h (n, C) right away and keeps only that: one head matmul fewer than
    recomputing the chunk in the backward pass, and no (n, V) tensor outlives its chunk.
    """
    import torch
    import torch.nn.functional as F

    class FrozenHeadCE(torch.autograd.Function):
        @staticmethod
        def forward(
            ctx: Any, h: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor
        ) -> torch.Tensor:
            logits = F.linear(h, head).float()  # (n, V) fp32
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            loss = ((lse - logits.gather(1, targets[:, None]).squeeze(1)) * weight).sum()
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            probs.scatter_add_(1, targets[:, None], -torch.ones_like(probs[:, :1]))
            probs.mul_(weight[:, None])
            ctx.save_for_backward((probs.to(head.dtype) @ head).to(h.dtype))  # (n, C)
            return loss

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
            (grad_h,) = ctx.saved_tensors
            return grad_h * grad, None, None, None

    return FrozenHeadCE


def build_loss_module(model: RWKV7, grad_ckpt: bool) -> nn.Module:
    """Wrap the model so that forward(tokens, reset, targets, weight) returns the summed token loss.

    The head and cross-entropy run over trained positions only, CE_CHUNK at a time, and no chunk's
    logits are kept for the backward pass: the (T, V) fp32 logits are never all alive (1 GiB per
    4096-token window at vocabulary 65536). `grad_ckpt` recomputes each block in the backward pass.
    """
    import torch
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    model.gradient_checkpointing = grad_ckpt

    class CausalLMLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, tokens: torch.Tensor, reset: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor
        ) -> torch.Tensor:
            # the final normalised hidden states (B, T, C): the model without its head
            h, _ = self.model(tokens, reset=reset, need_state=False, return_hidden=True)
            head = self.model.head.weight
            idx = weight.reshape(-1).nonzero().squeeze(-1)
            if idx.numel() == 0:  # nothing trains here; keep every parameter in the graph (DDP)
                return (h.sum() + head.sum()) * 0.0
            h = h.reshape(-1, h.shape[-1])[idx]
            tgt, w = targets.reshape(-1)[idx], weight.reshape(-1)[idx]
            total = h.new_zeros((), dtype=torch.float32)
            for lo in range(0, len(idx), CE_CHUNK):
                part = (h[lo : lo + CE_CHUNK], head, tgt[lo : lo + CE_CHUNK], w[lo : lo + CE_CHUNK])
                if not torch.is_grad_enabled():
                    total = total + _ce_sum(*part)
                elif not head.requires_grad:
                    total = total + _frozen_head_ce().apply(*part)
                else:  # a trained head (TRAIN_EXTRA=head): recompute the chunk in the backward pass
                    total = total + checkpoint(_ce_sum, *part, use_reentrant=False)
            return total

    return CausalLMLoss()


def build_model(spec: RunSpec, device: Any, precision: str) -> tuple[RWKV7, list[str]]:
    """Base (frozen) + optional quantisation + LoRA; returns the model and the extra trained keys."""
    import torch

    from rwkv1c.lora import add_lora, quantize_block_linears
    from rwkv1c.model import RWKV7

    cfg = spec.cfg
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = RWKV7.from_pth(spec.model, device="cpu", dtype=dtype)
    quantize_block_linears(model, cfg.quant, device=device, compute_dtype=dtype)
    model.to(device)
    torch.manual_seed(cfg.seed)  # the LoRA initialisation is the same on every rank and every resume
    extra = add_lora(
        model,
        r=cfg.lora_r,
        alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout,
        targets=cfg.lora_targets,
        extra=cfg.train_extra,
    )
    model.compile_blocks = compile_blocks_for(cfg.compile, spec.device, cfg.quant)
    return model.train(), extra


def compile_blocks_for(setting: str, device: str, quant: str) -> bool:
    """Whether COMPILE=`setting` sends the blocks through torch.compile: `auto` does on a GPU, except with
    int8 layers, whose quantisation has data-dependent shapes: the graph breaks at every layer, and the
    compile of those fragments (minutes on the first step, again when validation flips grad mode) costs
    more than the fusion saves."""
    if setting == "auto":
        return device == "cuda" and quant != "int8"
    return setting == "on"


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warmup over WARMUP_STEPS, then cosine from LR down to LR * LR_FINAL_RATIO at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    low = cfg.lr * cfg.lr_final_ratio
    return low + (cfg.lr - low) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------- run folder


class RunLog:
    """train.log, metrics.jsonl, the loss plot and the progress bar (main process only)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self.metrics_path = run_dir / "metrics.jsonl"
        self._log = open(run_dir / "train.log", "a", encoding="utf-8") if enabled else None  # noqa: SIM115
        self.bar: Any = None
        self.wandb: Any = None

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        assert self._log is not None
        self._log.write(line + "\n")
        self._log.flush()
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def metrics(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        assert self._log is not None
        self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} " + " ".join(f"{k}={v}" for k, v in row.items()) + "\n")
        self._log.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        if self.bar is None:
            shown = {"loss": "{:.4f}", "val_loss": "{:.4f}", "lr": "{:.2e}", "tokens_per_s": "{:.0f}"}
            parts = [f"{k} {fmt.format(row[k])}" for k, fmt in shown.items() if row.get(k) is not None]
            print(f"step {row['step']}: " + ", ".join(parts), file=sys.stderr)

    def truncate_metrics(self, last_step: int) -> None:
        """Drop rows logged after `last_step` (a resumed run logs them again)."""
        if not self.enabled or not self.metrics_path.is_file():
            return
        from rwkv1c.fsutil import atomic_open

        rows = read_metrics(self.metrics_path)
        with atomic_open(self.metrics_path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= last_step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._log is not None:
            self._log.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, png_path: Path) -> None:
    """loss.png: training loss and validation loss against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rwkv1c.fsutil import atomic_path

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.2, ms=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def save_checkpoint(
    run_dir: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    adapter_cfg: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int,
) -> Path:
    """checkpoints/step-N/: adapter (usable by merge / generate) + trainer.pt. Written under a temporary
    name and renamed when complete; older ones beyond `keep` are removed only afterwards, so a failure
    (disk full) leaves the previous checkpoint intact."""
    import torch

    from rwkv1c.adapter import save_adapter
    from rwkv1c.fsutil import atomic_path

    folder = run_dir / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = folder / f".tmp-{CHECKPOINT_PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_adapter(tmp, tensors, adapter_cfg)
        with atomic_path(tmp / "trainer.pt") as t:
            torch.save(trainer_state, t)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = latest_checkpoint(run_dir)
        raise UserError(
            f"could not write the checkpoint at step {step}: {exc.strerror or exc}; "
            + (f"the previous checkpoint {prev.name} is intact" if prev else "no earlier checkpoint exists"),
            hint="free disk space (or move runs/ with RUNS_DIR in configs/workspace.env), then rerun with --resume",
        ) from None
    done = complete_checkpoints(run_dir)
    for old in done[: max(0, len(done) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def publish_adapter(run_dir: Path, checkpoint: Path) -> Path:
    """runs/NAME/adapter/: the adapter of the final checkpoint, replaced as a whole only when complete."""
    from rwkv1c.adapter import CONFIG, WEIGHTS

    final, tmp, old = run_dir / "adapter", run_dir / ".tmp-adapter", run_dir / ".old-adapter"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name in (WEIGHTS, CONFIG):
            shutil.copyfile(checkpoint / name, tmp / name)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"could not write the adapter: {exc.strerror or exc}", hint="free disk space, then --resume"
        ) from None
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


class StopFlag:
    """Ctrl-C / SIGTERM: finish the optimizer step in flight, save a checkpoint, stop. A second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[signal.Signals, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step to save a checkpoint (Ctrl-C again to abort without saving)", file=sys.stderr)

    def agreed(self, step: int, every: int, dist: DistInfo) -> bool:
        """Whether the run stops after `step`. One process reads its own flag; several decide together at
        every `every`-th step only (a collective each step would make the host wait for the GPU every step),
        and each takes part in that vote whatever its own flag says, so none waits for one that has left."""
        if dist.world == 1:
            return self.requested
        return step % every == 0 and distributed_sum(dist, [float(self.requested)])[0] > 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)


# ---------------------------------------------------------------------------------------------- the loop


def _to_device(batch: Batch, device: Any) -> tuple[torch.Tensor, ...]:
    import torch

    return tuple(
        torch.from_numpy(getattr(batch, f)).to(device, non_blocking=True)
        for f in ("tokens", "reset", "targets", "weight")
    )


def peak_memory_gib(device: Any) -> float:
    import torch

    if getattr(device, "type", device) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def evaluate(loss_module: nn.Module, windows: list[Batch], dist: DistInfo, autocast: Any) -> float | None:
    """Mean validation loss per trained token over every window (each rank takes every world-th one)."""
    import torch

    if not windows:
        return None
    was_training = loss_module.training
    loss_module.eval()
    total = count = 0.0
    with torch.no_grad(), autocast():
        for w in windows[dist.rank :: dist.world]:
            tokens, reset, targets, weight = _to_device(w, dist.device)
            total += float(loss_module(tokens, reset, targets, weight))
            count += w.n_trained
    loss_module.train(was_training)
    total, count = distributed_sum(dist, [total, count])
    return total / count if count else None


def distributed_sum(dist: DistInfo, values: list[float]) -> list[float]:
    from rwkv1c.distributed import all_sum

    return all_sum(dist, values)


def fit(spec: RunSpec, *, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train as `spec` says; return a summary (first / last logged loss, val loss, paths)."""
    from rwkv1c import distributed

    dist = distributed.init(spec.device)
    try:
        return _fit(spec, dist, on_step)
    finally:
        distributed.shutdown(dist)


def _fit(spec: RunSpec, dist: DistInfo, on_step: Callable[[int], None] | None) -> dict[str, Any]:
    import torch

    from rwkv1c import data as D
    from rwkv1c import distributed
    from rwkv1c.adapter import adapter_config
    from rwkv1c.config import as_dict
    from rwkv1c.fsutil import sha256_file, write_json
    from rwkv1c.lora import adapter_tensors, load_adapter_tensors, param_groups

    cfg, run_dir = spec.cfg, spec.run_dir
    # --- run folder (main process writes; the others wait)
    fresh = not spec.resume
    if dist.is_main:
        if spec.overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(dist)
    log = RunLog(run_dir, dist.is_main)
    try:
        precision = cfg.precision if cfg.precision != "auto" else ("bf16" if spec.device == "cuda" else "fp32")
        autocast: Callable[[], Any] = (
            (lambda: torch.autocast(spec.device, dtype=torch.bfloat16))
            if precision == "bf16"
            else contextlib.nullcontext
        )

        # --- data
        docs = D.open_documents(spec.data)
        if cfg.val_data:
            train_docs: D.Documents = docs
            val_docs: D.Documents | None = D.open_documents(Path(cfg.val_data))
        else:
            tr, va = D.split_validation(len(docs), cfg.val_fraction, cfg.seed)
            train_docs = D.Subset(docs, tr)
            val_docs = D.Subset(docs, va) if len(va) else None
        plan = D.StepPlan(train_docs, cfg.ctx_len, cfg.micro_bsz, cfg.grad_accum, cfg.seed, dist.world)
        total_steps = cfg.max_steps or cfg.epochs * plan.steps_per_epoch
        val_windows = D.validation_windows(val_docs, cfg.ctx_len, cfg.val_max_windows) if val_docs else []

        # --- model, optimizer
        base_sha = sha256_file(spec.model) if dist.is_main else ""
        model, extra_keys = build_model(spec, dist.device, precision)
        loss_module = build_loss_module(model, cfg.grad_ckpt)
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ddp_kwargs: dict[str, Any] = {"device_ids": [dist.device]} if spec.device == "cuda" else {}
            train_module: nn.Module = DDP(loss_module, init_sync=False, **ddp_kwargs)
        else:
            train_module = loss_module
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8)
        n_lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
        n_extra = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n)

        resolved = {
            "model": str(spec.model),
            "model_sha256": base_sha,
            "data": str(spec.data),
            "profile": spec.profile,
            "preset": spec.preset,
            "device": spec.device,
            "devices": dist.world,
            "precision": precision,
            "train": as_dict(cfg),
            "train_documents": len(train_docs),
            "val_documents": len(val_docs) if val_docs else 0,
            "windows_per_epoch": plan.windows_per_epoch,
            "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": total_steps,
        }

        def adapter_meta(step: int) -> dict[str, Any]:
            return adapter_config(
                base_path=spec.model,
                base_sha256=base_sha,
                model_config=model.config,
                quant=cfg.quant,
                r=cfg.lora_r,
                alpha=cfg.lora_alpha,
                dropout=cfg.lora_dropout,
                targets=list(cfg.lora_targets),
                extra_groups=list(cfg.train_extra),
                extra_keys=extra_keys,
                training={k: v for k, v in resolved.items() if k != "model_sha256"},
                step=step,
            )

        # --- resume
        start_step = 0
        if spec.resume:
            ckpt = latest_checkpoint(run_dir)
            assert ckpt is not None
            state = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=True)
            from rwkv1c.adapter import read_adapter_tensors

            if dist.is_main and state.get("model_sha256") and state["model_sha256"] != base_sha and not spec.force:
                raise UserError(
                    f"{spec.model.name} is not the base this run was trained on (sha256 differs)",
                    hint="pass the original base with --model, or --force to continue anyway",
                )
            if state.get("data_signature") != [len(train_docs), plan.windows_per_epoch]:
                raise UserError(
                    "the training data changed since this run started (other documents or token counts)",
                    hint="resume with the data the run was started on (see runs/NAME/config.json)",
                )
            load_adapter_tensors(model, read_adapter_tensors(ckpt))
            optimizer.load_state_dict(state["optimizer"])
            rng = state["rng"][dist.rank]
            torch.set_rng_state(rng["cpu"])
            if rng.get("cuda") is not None and spec.device == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], dist.device)
            start_step = int(state["step"])
            log.truncate_metrics(start_step)
            log.info(f"resumed from {ckpt.name} (step {start_step} of {total_steps})")
        elif dist.is_main:
            write_json(run_dir / "config.json", resolved)

        if dist.is_main and spec.wandb:
            log.wandb = _wandb_init(spec.wandb, run_dir.name, resolved)
        log.info(
            f"run {run_dir.name}: {spec.model.name} ({model.config.n_layer} layers, width {model.config.n_embd}), "
            f"profile {spec.profile} (quant {cfg.quant}, r {cfg.lora_r}, alpha {cfg.lora_alpha}), "
            f"{n_lora / 1e6:.2f}M LoRA + {n_extra / 1e6:.2f}M extra trainable parameters"
        )
        log.info(
            f"data: {len(train_docs)} train / {len(val_docs) if val_docs else 0} validation documents, "
            f"{plan.windows_per_epoch} windows of {cfg.ctx_len} tokens per epoch, "
            f"{plan.steps_per_epoch} steps per epoch x {cfg.micro_bsz} x {cfg.grad_accum} x {dist.world}; "
            f"{total_steps} steps; {spec.device} ({precision}), WKV {_wkv_name(model, spec.device)}"
            + (", blocks through torch.compile (the first step compiles)" if model.compile_blocks else "")
        )

        def trainer_state(step: int) -> dict[str, Any]:
            rng = {"cpu": torch.get_rng_state()}
            if spec.device == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(dist.device)
            epoch, window = plan.position(step)
            return {
                "step": step,
                "epoch": epoch,
                "next_window": window,
                "optimizer": optimizer.state_dict(),
                "scheduler": {
                    "kind": "warmup_cosine",
                    "step": step,
                    "total_steps": total_steps,
                    "lr": lr_at(min(step, total_steps - 1), cfg, total_steps),
                },
                "rng": distributed.gather_objects(dist, rng),
                "model_sha256": base_sha,
                "data_signature": [len(train_docs), plan.windows_per_epoch],
            }

        def checkpoint(step: int) -> Path | None:
            """Save step `step` (every rank takes part); the folder on the main process, None elsewhere."""
            state = trainer_state(step)  # every rank takes part (RNG gather)
            error: UserError | None = None
            path = None
            if dist.is_main:
                try:
                    path = save_checkpoint(
                        run_dir,
                        step,
                        adapter_tensors(model, extra_keys),
                        adapter_meta(step),
                        state,
                        cfg.keep_checkpoints,
                    )
                    log.info(f"checkpoint {path.relative_to(run_dir)}")
                    plot_metrics(log.metrics_path, run_dir / "loss.png")
                except UserError as exc:
                    error = exc
            failed = distributed_sum(dist, [float(error is not None)])[0]
            if error is not None:
                raise error
            if failed:
                raise UserError("the main process could not write a checkpoint; see its message")
            return path

        # --- train: a progress bar on a terminal, one line per logged step otherwise (logs, CI)
        if dist.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            log.bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc=run_dir.name,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
                unit="step",
            )
        first_loss = last_loss = last_val = None
        acc_loss = acc_tokens = 0.0
        t_last, tokens_since = time.perf_counter(), 0
        step = start_step
        stop = StopFlag()
        try:
            with stop.installed():
                while step < total_steps:
                    lr = lr_at(step, cfg, total_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    micro, n_step = plan.step(step, dist.rank)
                    scale = dist.world / max(n_step, 1)  # DDP averages over ranks: the result is sum / n_step
                    step_loss: Any = 0.0  # a device tensor: read back only when logging (no sync per micro-batch)
                    for m, batch in enumerate(micro):
                        sync = dist.world == 1 or m == len(micro) - 1
                        ctx = contextlib.nullcontext() if sync else train_module.no_sync()  # type: ignore[operator]
                        tokens, reset, targets, weight = _to_device(batch, dist.device)
                        with ctx:
                            with autocast():
                                loss_sum = train_module(tokens, reset, targets, weight)
                            (loss_sum * scale).backward()
                        step_loss = step_loss + loss_sum.detach().float()
                        tokens_since += tokens.numel() * dist.world
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    acc_loss += step_loss
                    acc_tokens += n_step / dist.world  # summed over ranks below
                    if log.bar is not None:
                        log.bar.update(1)

                    val_due = bool(val_windows) and (
                        (cfg.val_every and step % cfg.val_every == 0) or step == total_steps
                    )
                    if step % cfg.log_every == 0 or step == start_step + 1 or step == total_steps or val_due:
                        loss_total, tok_total = distributed_sum(dist, [float(acc_loss), acc_tokens])
                        elapsed = time.perf_counter() - t_last
                        row: dict[str, Any] = {
                            "step": step,
                            "epoch": round(step / plan.steps_per_epoch, 4),
                            "loss": loss_total / tok_total if tok_total else None,
                            "lr": lr,
                            "tokens_per_s": round(tokens_since / elapsed, 1),
                            "peak_mem_gib": round(peak_memory_gib(dist.device), 3),
                        }
                        if val_due:
                            last_val = row["val_loss"] = evaluate(loss_module, val_windows, dist, autocast)
                        if row["loss"] is not None:
                            first_loss = row["loss"] if first_loss is None else first_loss
                            last_loss = row["loss"]
                        log.metrics(row)
                        if log.bar is not None:
                            log.bar.set_postfix(
                                loss=f"{row['loss']:.4f}" if row["loss"] is not None else "-",
                                lr=f"{lr:.2e}",
                                tok_s=f"{row['tokens_per_s']:.0f}",
                                mem=f"{row['peak_mem_gib']:.1f}G",
                            )
                        acc_loss = acc_tokens = 0.0
                        t_last, tokens_since = time.perf_counter(), 0  # validation time is not training time
                    if step % cfg.save_every == 0 and step < total_steps:
                        checkpoint(step)
                    if on_step is not None:
                        on_step(step)
                    if stop.agreed(step, cfg.log_every, dist):
                        checkpoint(step)
                        log.info(f"stopped at step {step}; continue with --resume (same --run)")
                        raise KeyboardInterrupt
        except torch.cuda.OutOfMemoryError as exc:
            raise out_of_memory(exc, dist.device, step + 1, spec) from None

        # --- finish: a last checkpoint (so the run can be extended) and the adapter
        last = checkpoint(step)
        result: dict[str, Any] = {
            "run_dir": str(run_dir),
            "steps": step,
            "first_loss": first_loss,
            "last_loss": last_loss,
            "val_loss": last_val,
        }
        if last is not None:
            adapter_dir = publish_adapter(run_dir, last)
            result["adapter"] = str(adapter_dir)
            log.info(f"done: {step} steps; adapter in {adapter_dir}")
        result["model"] = model  # for callers in this process (tests); the CLI prints the paths
        return result
    except BaseException:
        # a new run that fails before its config.json exists leaves no folder that blocks the next try
        if fresh and dist.is_main and not (run_dir / "config.json").exists():
            log.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        log.close()


def out_of_memory(exc: BaseException, device: Any, step: int, spec: RunSpec) -> UserError:
    """The one-paragraph message for a CUDA out-of-memory error: the peak, the settings, what to lower."""
    import torch

    from rwkv1c.hints import hint_for

    cfg = spec.cfg
    of_total = ""
    if getattr(device, "type", device) == "cuda":
        of_total = f" of {torch.cuda.get_device_properties(device).total_memory / 2**30:.1f} GiB"
    return UserError(
        f"the GPU ran out of memory at step {step} (peak {peak_memory_gib(device):.1f} GiB allocated{of_total}) "
        f"with ctx_len {cfg.ctx_len}, micro_bsz {cfg.micro_bsz}, profile {spec.profile}, gradient checkpointing "
        f"{'on' if cfg.grad_ckpt else 'off'}; nothing after the last checkpoint was kept",
        hint=hint_for(exc),
    )


def _wkv_name(model: RWKV7, device: str) -> str:
    from rwkv1c.wkv import fla_available

    if model.wkv_impl != "auto":
        return str(model.wkv_impl)
    return "fla chunk_rwkv7 (Triton)" if device == "cuda" and fla_available() else "chunked (PyTorch)"


def _wandb_init(project: str, name: str, config: dict[str, Any]) -> Any:
    try:
        import wandb
    except ImportError:
        raise UserError(
            "--wandb needs the wandb package", hint="`pip install wandb` in the .venv (or drop --wandb)"
        ) from None
    return wandb.init(project=project, name=name, id=name, config=config, resume="allow")


# ---------------------------------------------------------------------------------------------- the verb


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
    """Fine-tune an RWKV-7 checkpoint with LoRA or QLoRA; writes runs/NAME/ (adapter, metrics, checkpoints).

    Settings: the profile (configs/profile/NAME.env) over the model preset's CTX_LEN and LR, then the
    flags below; any other setting with --override KEY=VALUE (keys of the profile files). The resolved
    settings are printed and saved in runs/NAME/config.json. Ctrl-C saves a checkpoint; --resume
    continues exactly where the run stopped.

    Args:
        model: base checkpoint (.pth, official RWKV-7 x070); required unless --resume.
        data: training data: a binidx prefix from `rwkv1c prepare` (PREFIX.bin/.idx) or a .jsonl file;
            required unless --resume.
        run: run name: the folder runs/NAME (default: PROFILE-DATE-TIME).
        profile: training profile from configs/profile/ (lora-bf16, qlora-nf4, qlora-int8); default: PROFILE
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
    from rwkv1c.config import env_overrides
    from rwkv1c.distributed import launched_by_torchrun, rank, relaunch

    overrides = parse_overrides(override)
    overrides.update(
        env_overrides(
            [
                ("val_data", None if val_data is None else str(val_data)),
                ("max_steps", max_steps),
                ("epochs", epochs),
                ("ctx_len", ctx_len),
                ("micro_bsz", micro_bsz),
                ("grad_accum", grad_accum),
                ("lr", lr),
                ("lora_r", lora_r),
                ("lora_alpha", lora_alpha),
                ("seed", seed),
                ("grad_ckpt", grad_ckpt),
                ("val_every", val_every),
            ]
        )
    )
    spec = setup(
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
    if spec.devices > 1 and not launched_by_torchrun():
        return relaunch(spec.devices, torchrun_args(spec))
    if rank() == 0:
        from rwkv1c.config import to_env_lines

        print("settings: " + " ".join(to_env_lines(spec.cfg)), file=sys.stderr)
    result = fit(spec)
    if "adapter" in result:
        print(f"run: {result['run_dir']}")
        print(f"adapter: {result['adapter']}")
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
