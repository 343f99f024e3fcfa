"""The training loop of `rwkv1c train`: LoRA / QLoRA on an RWKV-7 checkpoint, written to runs/NAME/.

`fit(spec)` reads top to bottom:

    open      data: documents -> seeded shuffle per epoch -> packed ctx_len windows (rwkv1c.data)
              model: base (bf16 on GPU, fp32 on CPU) -> optional NF4 / int8 block linears -> LoRA
              (`build.py`), the loss (`loss.py`), AdamW
    resume    adapter, optimizer, RNG and data position from the latest checkpoint (`rundir.py`)
    steps     grad_accum micro-batches -> loss = sum of trained-token cross-entropies / trained tokens
              of the whole step (over every GPU) -> clip -> AdamW -> warmup + cosine lr
    record    metrics.jsonl, train.log, loss.png, checkpoints/step-N/, adapter/ at the end

A run killed and resumed with --resume ends where an uninterrupted run ends: the data order and
every window are a pure function of (seed, step), and a checkpoint holds everything else.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rwkv1c.config import TrainConfig
from rwkv1c.errors import UserError
from rwkv1c.train.rundir import (
    MODEL_FILE,
    RunLog,
    latest_checkpoint,
    plot_metrics,
    publish_adapter,
    publish_model,
    save_checkpoint,
)
from rwkv1c.train.settings import RunSpec
from rwkv1c.train.step import StepRunner, to_device

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rwkv1c.data.documents import Documents
    from rwkv1c.data.packing import Batch, StepPlan
    from rwkv1c.model.rwkv7 import RWKV7
    from rwkv1c.train.distributed import DistInfo


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warmup over WARMUP_STEPS, then cosine from LR down to LR * LR_FINAL_RATIO at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    low = cfg.lr * cfg.lr_final_ratio
    return low + (cfg.lr - low) * 0.5 * (1 + math.cos(math.pi * progress))


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


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything a run holds while it trains (made by `open_run`)."""

    spec: RunSpec
    dist: DistInfo
    log: RunLog
    precision: str
    autocast: Callable[[], Any]
    train_docs: Documents
    val_docs: Documents | None
    plan: StepPlan
    total_steps: int
    val_windows: list[Batch]
    model: RWKV7
    extra_keys: list[str]
    loss_module: nn.Module
    train_module: nn.Module
    optimizer: torch.optim.Optimizer
    trainable: list[torch.nn.Parameter]
    runner: StepRunner
    base_sha: str
    resolved: dict[str, Any] = field(default_factory=dict)
    step: int = 0  # optimizer steps done

    @property
    def cfg(self) -> TrainConfig:
        return self.spec.cfg


def fit(spec: RunSpec, *, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train as `spec` says; return a summary (first / last logged loss, val loss, paths)."""
    from rwkv1c.train import distributed

    dist = distributed.init(spec.device)
    try:
        result = _fit(spec, dist, on_step)
    except BaseException:
        distributed.shutdown(dist, together=False)
        raise
    distributed.shutdown(dist)
    return result


def _fit(spec: RunSpec, dist: DistInfo, on_step: Callable[[int], None] | None) -> dict[str, Any]:
    from rwkv1c.fsutil import write_json
    from rwkv1c.train import distributed

    fresh = not spec.resume
    if dist.is_main:  # the main process writes the folder; the others wait
        if spec.overwrite and spec.run_dir.exists():
            shutil.rmtree(spec.run_dir)
        spec.run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(dist)
    log = RunLog(spec.run_dir, dist.is_main)
    try:
        run = open_run(spec, dist, log)
        if spec.resume:
            start_step = resume(run)
        else:
            start_step = 0
            if dist.is_main:
                write_json(spec.run_dir / "config.json", run.resolved)
        if dist.is_main and spec.wandb:
            log.wandb = _wandb_init(spec.wandb, spec.run_dir.name, run.resolved)
        announce(run)
        try:
            step, losses = train_steps(run, start_step, on_step)
        except torch_oom() as exc:
            raise out_of_memory(exc, dist.device, run.step + 1, spec) from None
        return finish(run, step, losses)
    except BaseException:
        # a new run that fails before its config.json exists leaves no folder that blocks the next try
        if fresh and dist.is_main and not (spec.run_dir / "config.json").exists():
            log.close()
            shutil.rmtree(spec.run_dir, ignore_errors=True)
        raise
    finally:
        log.close()


def torch_oom() -> type[BaseException]:
    import torch

    return torch.cuda.OutOfMemoryError


def open_run(spec: RunSpec, dist: DistInfo, log: RunLog) -> Run:
    """The data, the model, the loss and the optimizer of a run, and its resolved settings."""
    import torch

    from rwkv1c.config import as_dict
    from rwkv1c.data import documents as D
    from rwkv1c.data.packing import StepPlan, validation_windows
    from rwkv1c.model.checkpoint import file_sha256
    from rwkv1c.train.build import build_model, load_base, param_groups, precision_for
    from rwkv1c.train.step import use_cuda_graphs

    cfg = spec.cfg
    precision = precision_for(cfg, spec.device)
    autocast: Callable[[], Any] = (
        (lambda: torch.autocast(spec.device, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    )
    docs = D.open_documents(spec.data)
    if cfg.val_data:
        train_docs: D.Documents = docs
        val_docs: D.Documents | None = D.open_documents(Path(cfg.val_data))
    else:
        tr, va = D.split_validation(len(docs), cfg.val_fraction, cfg.seed)
        train_docs = D.Subset(docs, tr)
        val_docs = D.Subset(docs, va) if len(va) else None
    plan = StepPlan(train_docs, cfg.ctx_len, cfg.micro_bsz, cfg.grad_accum, cfg.seed, dist.world)
    total_steps = cfg.max_steps or cfg.epochs * plan.steps_per_epoch
    val_windows = validation_windows(val_docs, cfg.ctx_len, cfg.val_max_windows) if val_docs else []

    base_sha = file_sha256(spec.model) if dist.is_main else ""
    graphs = use_cuda_graphs(cfg.cuda_graphs, spec.device, dist.world, cfg.quant, cfg.lora_dropout,
                             cfg.micro_bsz * cfg.ctx_len)  # fmt: skip
    base = load_base(spec.model, precision, full=cfg.method == "full")
    model, extra_keys = build_model(base, cfg, dist.device, graphs=graphs)
    from rwkv1c.train.loss import build_loss_module

    loss_module = build_loss_module(model, cfg.grad_ckpt, keep_rng=cfg.lora_dropout > 0)
    train_module: nn.Module = loss_module
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_kwargs: dict[str, Any] = {"device_ids": [dist.device]} if spec.device == "cuda" else {}
        train_module = DDP(loss_module, init_sync=False, **ddp_kwargs)
    # one fused kernel for the whole update on a GPU
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8,
                                  fused=spec.device == "cuda")  # fmt: skip
    trainable = [p for p in model.parameters() if p.requires_grad]
    runner = StepRunner(train_module, trainable, dist.device, autocast, graphs=graphs, note=log.info)
    run = Run(
        spec=spec, dist=dist, log=log, precision=precision, autocast=autocast, train_docs=train_docs,
        val_docs=val_docs, plan=plan, total_steps=total_steps, val_windows=val_windows, model=model,
        extra_keys=extra_keys, loss_module=loss_module, train_module=train_module, optimizer=optimizer,
        trainable=trainable, runner=runner, base_sha=base_sha,
    )  # fmt: skip
    run.resolved = {
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
        "prompt_format": D.prompt_format_of(train_docs),
    }
    return run


def resume(run: Run) -> int:
    """Load the latest checkpoint into the run (adapter, optimizer, RNG); its step."""
    import torch

    from rwkv1c.model.adapter import read_adapter_tensors
    from rwkv1c.model.lora import load_adapter_tensors

    spec, dist = run.spec, run.dist
    ckpt = latest_checkpoint(spec.run_dir)
    assert ckpt is not None
    state = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=True)
    if dist.is_main and state.get("model_sha256") and state["model_sha256"] != run.base_sha and not spec.force:
        raise UserError(
            f"{spec.model.name} is not the base this run was trained on (sha256 differs)",
            hint="pass the original base with --model, or --force to continue anyway",
        )
    if state.get("data_signature") != [len(run.train_docs), run.plan.windows_per_epoch]:
        raise UserError(
            "the training data changed since this run started (other documents or token counts)",
            hint="resume with the data the run was started on (see runs/NAME/config.json)",
        )
    if run.cfg.method == "full":
        weights = torch.load(ckpt / MODEL_FILE, map_location="cpu", weights_only=True)
        with torch.no_grad():
            for name, p in run.model.named_parameters():
                p.copy_(weights[name])
    else:
        load_adapter_tensors(run.model, read_adapter_tensors(ckpt))
    run.optimizer.load_state_dict(state["optimizer"])
    rng = state["rng"][dist.rank]
    torch.set_rng_state(rng["cpu"])
    if rng.get("cuda") is not None and spec.device == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], dist.device)
    start_step = int(state["step"])
    run.log.truncate_metrics(start_step)
    run.log.info(f"resumed from {ckpt.name} (step {start_step} of {run.total_steps})")
    return start_step


def announce(run: Run) -> None:
    """Two lines on what is trained, on what data, where."""
    cfg, spec, model = run.cfg, run.spec, run.model
    n_lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    n_extra = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n)
    what = (
        f"every parameter trained ({n_extra / 1e6:.2f}M)"
        if cfg.method == "full"
        else f"quant {cfg.quant}, r {cfg.lora_r}, alpha {cfg.lora_alpha}, "
        f"{n_lora / 1e6:.2f}M LoRA + {n_extra / 1e6:.2f}M extra trainable parameters"
    )
    run.log.info(
        f"run {spec.run_dir.name}: {spec.model.name} ({model.config.n_layer} layers, width {model.config.n_embd}), "
        f"profile {spec.profile}: {what}"
    )
    plan, n_val = run.plan, len(run.val_docs) if run.val_docs else 0
    run.log.info(
        f"data: {len(run.train_docs)} train / {n_val} validation documents, "
        f"{plan.windows_per_epoch} windows of {cfg.ctx_len} tokens per epoch, "
        f"{plan.steps_per_epoch} steps per epoch x {cfg.micro_bsz} x {cfg.grad_accum} x {run.dist.world}; "
        f"{run.total_steps} steps; {spec.device} ({run.precision}), WKV {_wkv_name(model, spec.device)}"
        + (", blocks through torch.compile (the first step compiles)" if model.compile_blocks else "")
        + (", each step replayed from a CUDA graph" if run.runner.graphs else "")
    )


# ---------------------------------------------------------------------------------------------- checkpoints


def adapter_meta(run: Run, step: int) -> dict[str, Any]:
    """The adapter_config.json of the adapter at `step`."""
    from rwkv1c.model.adapter import adapter_config

    cfg = run.cfg
    return adapter_config(
        base_path=run.spec.model,
        base_sha256=run.base_sha,
        model_config=run.model.config,
        quant=cfg.quant,
        r=cfg.lora_r,
        alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout,
        targets=list(cfg.lora_targets),
        extra_groups=list(cfg.train_extra),
        extra_keys=run.extra_keys,
        training={k: v for k, v in run.resolved.items() if k != "model_sha256"},
        step=step,
        prompt_format=run.resolved["prompt_format"],
    )


def trainer_state(run: Run, step: int) -> dict[str, Any]:
    """Everything a resume needs besides the adapter (every rank takes part: its RNG is gathered)."""
    import torch

    from rwkv1c.train import distributed

    rng = {"cpu": torch.get_rng_state()}
    if run.spec.device == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.dist.device)
    epoch, window = run.plan.position(step)
    return {
        "step": step,
        "epoch": epoch,
        "next_window": window,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": {
            "kind": "warmup_cosine",
            "step": step,
            "total_steps": run.total_steps,
            "lr": lr_at(min(step, run.total_steps - 1), run.cfg, run.total_steps),
        },
        "rng": distributed.gather_objects(run.dist, rng),
        "model_sha256": run.base_sha,
        "data_signature": [len(run.train_docs), run.plan.windows_per_epoch],
    }


def checkpoint(run: Run, step: int) -> Path | None:
    """Save step `step` (every rank takes part); the folder on the main process, None elsewhere."""
    state = trainer_state(run, step)
    error: UserError | None = None
    path = None
    if run.dist.is_main:
        try:
            path = save_checkpoint(run.spec.run_dir, step, lambda folder: write_weights(run, step, folder), state,
                                   run.cfg.keep_checkpoints)  # fmt: skip
            run.log.info(f"checkpoint {path.relative_to(run.spec.run_dir)}")
            plot_metrics(run.log.metrics_path, run.spec.run_dir / "loss.png")
        except UserError as exc:
            error = exc
    failed = distributed_sum(run.dist, [float(error is not None)])[0]
    if error is not None:
        raise error
    if failed:
        raise UserError("the main process could not write a checkpoint; see its message")
    return path


def write_weights(run: Run, step: int, folder: Path) -> None:
    """What a checkpoint holds of the model: the adapter (LoRA), or every weight in fp32 (full)."""
    if run.cfg.method == "full":
        import torch

        from rwkv1c.fsutil import atomic_path

        with atomic_path(folder / MODEL_FILE) as tmp:
            torch.save({k: v.detach().float().cpu() for k, v in run.model.state_dict().items()}, tmp)
        return
    from rwkv1c.model.adapter import save_adapter
    from rwkv1c.model.lora import adapter_tensors

    save_adapter(folder, adapter_tensors(run.model, run.extra_keys), adapter_meta(run, step))


# ---------------------------------------------------------------------------------------------- the steps


@dataclass
class Losses:
    """Loss bookkeeping between log lines, and the first / last logged values."""

    first: float | None = None
    last: float | None = None
    val: float | None = None
    acc_loss: Any = 0.0  # a device tensor: read back only when logging (no sync per step)
    acc_tokens: float = 0.0
    tokens_since: int = 0
    t_last: float = field(default_factory=time.perf_counter)


def train_steps(run: Run, start_step: int, on_step: Callable[[int], None] | None) -> tuple[int, Losses]:
    """Optimizer steps from `start_step` to the end (or to a Ctrl-C, which checkpoints and re-raises)."""
    cfg, dist = run.cfg, run.dist
    run.log.start_progress(run.total_steps, start_step)
    losses = Losses()
    step = run.step = start_step
    stop = StopFlag()
    with stop.installed():
        while step < run.total_steps:
            lr = lr_at(step, cfg, run.total_steps)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            step_loss, n_step, tokens = optimizer_step(run, step)
            step = run.step = step + 1
            losses.acc_loss = losses.acc_loss + step_loss
            losses.acc_tokens += n_step / dist.world  # summed over ranks when logged
            losses.tokens_since += tokens
            run.log.advance()
            val_due = bool(run.val_windows) and (
                (cfg.val_every and step % cfg.val_every == 0) or step == run.total_steps
            )
            if step % cfg.log_every == 0 or step == start_step + 1 or step == run.total_steps or val_due:
                log_step(run, step, lr, losses, val_due)
            if step % cfg.save_every == 0 and step < run.total_steps:
                checkpoint(run, step)
            if on_step is not None:
                on_step(step)
            if stop.agreed(step, cfg.log_every, dist):
                checkpoint(run, step)
                run.log.info(f"stopped at step {step}; continue with --resume (same --run)")
                raise KeyboardInterrupt
    return step, losses


def optimizer_step(run: Run, step: int) -> tuple[Any, int, int]:
    """One optimizer step: its micro-batches forward and backward, clip, AdamW. Returns the summed loss (a
    device tensor), the trained tokens of the whole step (every rank) and the tokens this step read."""
    import torch

    dist = run.dist
    micro, n_step = run.plan.step(step, dist.rank)
    scale = dist.world / max(n_step, 1)  # DDP averages over ranks: the result is sum / n_step
    step_loss: Any = 0.0
    tokens = 0
    for m, batch in enumerate(micro):
        sync = dist.world == 1 or m == len(micro) - 1
        ctx = contextlib.nullcontext() if sync else run.train_module.no_sync()  # type: ignore[operator]
        with ctx:
            step_loss = step_loss + run.runner(batch, scale).float()
        tokens += batch.tokens.size * dist.world
    if run.cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.trainable, run.cfg.grad_clip, foreach=True)
    run.optimizer.step()
    # a captured step accumulates into the .grad tensors it was recorded with: zero them in place
    run.optimizer.zero_grad(set_to_none=not run.runner.captured)
    return step_loss, n_step, tokens


def log_step(run: Run, step: int, lr: float, losses: Losses, val_due: bool) -> None:
    """One metrics row (loss since the last row, over every rank), with validation when it is due."""
    loss_total, tok_total = distributed_sum(run.dist, [float(losses.acc_loss), losses.acc_tokens])
    elapsed = time.perf_counter() - losses.t_last
    row: dict[str, Any] = {
        "step": step,
        "epoch": round(step / run.plan.steps_per_epoch, 4),
        "loss": loss_total / tok_total if tok_total else None,
        "lr": lr,
        "tokens_per_s": round(losses.tokens_since / elapsed, 1),
        "peak_mem_gib": round(peak_memory_gib(run.dist.device), 3),
    }
    if val_due:
        losses.val = row["val_loss"] = evaluate(run.loss_module, run.val_windows, run.dist, run.autocast)
    if row["loss"] is not None:
        losses.first = row["loss"] if losses.first is None else losses.first
        losses.last = row["loss"]
    run.log.metrics(row)
    losses.acc_loss, losses.acc_tokens = 0.0, 0.0
    losses.t_last, losses.tokens_since = time.perf_counter(), 0  # validation time is not training time


def finish(run: Run, step: int, losses: Losses) -> dict[str, Any]:
    """A last checkpoint (so the run can be extended) and the adapter; the run's summary."""
    from rwkv1c.train.rundir import read_metrics

    last = checkpoint(run, step)
    # a resumed run's first loss is the one its first session logged, not the first after the resume
    logged = [r["loss"] for r in read_metrics(run.log.metrics_path) if r.get("loss") is not None]
    result: dict[str, Any] = {
        "run_dir": str(run.spec.run_dir),
        "steps": step,
        "first_loss": logged[0] if logged else losses.first,
        "last_loss": losses.last,
        "val_loss": losses.val,
    }
    if last is not None and run.cfg.method == "full":
        path = publish_model(run.spec.run_dir, last)
        result["model_file"] = str(path)
        run.log.info(f"done: {step} steps; model in {path}")
    elif last is not None:
        adapter_dir = publish_adapter(run.spec.run_dir, last)
        result["adapter"] = str(adapter_dir)
        run.log.info(f"done: {step} steps; adapter in {adapter_dir}")
    result["model"] = run.model  # for callers in this process (tests); the CLI prints the paths
    return result


# ---------------------------------------------------------------------------------------------- helpers


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
            tokens, reset, targets, weight = to_device(w, dist.device)
            total += float(loss_module(tokens, reset, targets, weight))
            count += w.n_trained
    loss_module.train(was_training)
    total, count = distributed_sum(dist, [total, count])
    return total / count if count else None


def distributed_sum(dist: DistInfo, values: list[float]) -> list[float]:
    from rwkv1c.train.distributed import all_sum

    return all_sum(dist, values)


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
    from rwkv1c.model.wkv import fla_available

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
