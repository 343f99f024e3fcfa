"""A run's folder, runs/NAME/: the log, the metrics and their plot, checkpoints and the final adapter.

    config.json          the resolved settings (written once, when a run starts)
    train.log            every message, with times
    metrics.jsonl        one row per logged step: loss, lr, tokens/s, memory, validation loss
    loss.png             the loss curves
    checkpoints/step-N/  the adapter at step N (usable by merge / generate) and trainer.pt (optimizer,
                         RNG, data position) for an exact --resume
    adapter/             the final adapter

Every file appears whole or not at all: checkpoints are written under a temporary name and renamed,
older ones removed only after the new one is complete.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rwkv1c.errors import UserError

if TYPE_CHECKING:
    pass

CHECKPOINT_PREFIX = "step-"
MODEL_FILE = "model.pth"  # a full fine-tuning run's weights: fp32 in checkpoints, bf16 in runs/NAME/


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoint folders, oldest first (a half-written one is never renamed into place)."""
    folder = run_dir / "checkpoints"
    return sorted(p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / "trainer.pt").is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


class RunLog:
    """train.log, metrics.jsonl, the loss plot and the progress bar (main process only)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self.metrics_path = run_dir / "metrics.jsonl"
        self._log = open(run_dir / "train.log", "a", encoding="utf-8") if enabled else None  # noqa: SIM115
        self.bar: Any = None
        self.wandb: Any = None
        self._progress: tuple[int, int, float] | None = None  # total steps, first step, start time

    def start_progress(self, total: int, initial: int) -> None:
        """A progress bar on a terminal wide enough for one; otherwise every logged line says the step of
        the total and the time left (logs, pipes, and terminals that report no width)."""
        import shutil

        self._progress = (total, initial, time.perf_counter())
        if not self.enabled or not sys.stderr.isatty() or shutil.get_terminal_size((0, 0)).columns < 40:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=self.run_dir.name, file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5, unit="step")  # fmt: skip

    def advance(self) -> None:
        """One optimizer step done."""
        if self.bar is not None:
            self.bar.update(1)

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
        """Append a metrics row (metrics.jsonl, train.log, W&B) and show it."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        assert self._log is not None
        self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} " + " ".join(f"{k}={v}" for k, v in row.items()) + "\n")
        self._log.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{row['loss']:.4f}" if row.get("loss") is not None else "-",
                lr=f"{row['lr']:.2e}",
                tok_s=f"{row['tokens_per_s']:.0f}",
                mem=f"{row['peak_mem_gib']:.1f}G",
            )
            return
        shown = {"loss": "{:.4f}", "val_loss": "{:.4f}", "lr": "{:.2e}", "tokens_per_s": "{:.0f}"}
        parts = [f"{k} {fmt.format(row[k])}" for k, fmt in shown.items() if row.get(k) is not None]
        print(f"step {self._step_of(row['step'])}: " + ", ".join(parts), file=sys.stderr)

    def _step_of(self, step: int) -> str:
        """ "12/300, ETA 4m05s" once the run's length is known, else just the step."""
        if self._progress is None:
            return str(step)
        total, first, t0 = self._progress
        done = step - first
        if done <= 0:
            return f"{step}/{total}"
        left = (time.perf_counter() - t0) / done * (total - step)
        return f"{step}/{total}, ETA {format_duration(left)}"

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


def format_duration(seconds: float) -> str:
    """12s, 4m05s, 2h03m."""
    s = round(max(seconds, 0.0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


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
    if train or val:
        ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def save_checkpoint(
    run_dir: Path,
    step: int,
    write_weights: Callable[[Path], None],
    trainer_state: dict[str, Any],
    keep: int,
) -> Path:
    """checkpoints/step-N/: the weights (`write_weights` fills the folder: the adapter, usable by merge /
    generate, or a full run's model.pth) + trainer.pt. Written under a temporary name and renamed when
    complete; older ones beyond `keep` are removed only afterwards, so a failure (disk full) leaves the
    previous checkpoint intact."""
    import torch

    from rwkv1c.fsutil import atomic_path

    folder = run_dir / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = folder / f".tmp-{CHECKPOINT_PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write_weights(tmp)
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
    from rwkv1c.model.adapter import CONFIG, WEIGHTS

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


def publish_model(run_dir: Path, checkpoint: Path) -> Path:
    """runs/NAME/model.pth: a full run's final weights as an official-layout bf16 checkpoint (written
    atomically), the way the released models are stored and every RWKV runtime reads them."""
    import torch

    from rwkv1c.fsutil import atomic_path

    weights = torch.load(checkpoint / MODEL_FILE, map_location="cpu", weights_only=True)
    final = run_dir / MODEL_FILE
    try:
        with atomic_path(final) as tmp:
            torch.save({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, tmp)
    except OSError as exc:
        raise UserError(
            f"could not write {final}: {exc.strerror or exc}", hint="free disk space, then --resume"
        ) from None
    return final
