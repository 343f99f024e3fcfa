"""Training throughput, MFU and peak VRAM for every profile x model size x context length (GPU).

Random weights with the real shapes of the released RWKV-7 checkpoints (no download), the same code
path as `rwkv1c train` (quantisation, peft LoRA, the chunked loss, AdamW, bf16 autocast, fla's WKV):

    python bench/train.py --out bench/results/train.json --vram-out bench/results/train_vram.json

MFU = 4 x non-embedding parameters x tokens / time / the card's bf16 dense peak. A LoRA step runs the
frozen weights forward and backward through their inputs only (2 + 2 FLOPs per parameter and token);
the LoRA matrices, the WKV recurrence and recomputation under gradient checkpointing are not counted.
Peak VRAM is torch.cuda.max_memory_allocated over the timed steps (weights, optimizer, activations).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from rwkv1c.config import TrainConfig, from_mapping, load_preset, load_profile
from rwkv1c.data.packing import Batch
from rwkv1c.model.config import ModelConfig
from rwkv1c.model.rwkv7 import RWKV7
from rwkv1c.train.build import build_model, param_groups
from rwkv1c.train.loss import build_loss_module
from rwkv1c.train.step import StepRunner, use_cuda_graphs

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "4090": 165.2, "L40S": 362.0}
PROFILES = ("lora-bf16", "qlora-nf4", "qlora-int8")  # configs/profile/*.env: quantisation, checkpointing


def load_train_profile(name: str) -> TrainConfig:
    return from_mapping(TrainConfig, load_profile(name), origin=f"profile {name}")


def card_peak_tflops() -> tuple[str, float | None]:
    name = torch.cuda.get_device_name()
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key in name:
            return name, peak
    return name, None


@torch.no_grad()
def random_model(n_layer: int, n_embd: int, device: str) -> RWKV7:
    """An RWKV-7 with the released shapes, bf16, every parameter random at a sensible scale."""
    cfg = ModelConfig(n_layer, n_embd)  # the released low-rank sizes, 4x FFN, vocab 65536
    with torch.device("meta"):
        model = RWKV7(cfg)
    model.to_empty(device=device)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1] if not name.endswith((".weight", ".bias")) else name.rsplit(".", 2)[-2]
        if name.endswith(".bias"):
            p.zero_()
        elif leaf in ("ln0", "ln1", "ln2", "ln_out", "ln_x"):
            p.fill_(1.0)
        elif leaf.startswith("x_") or leaf in ("k_k", "k_a"):
            p.uniform_(0.2, 0.8)
        elif leaf in ("w0", "a0", "v0", "r_k"):
            p.normal_(0.0, 0.5)
        elif name == "emb.weight":
            p.normal_(0.0, 1.0)
        else:  # matrices, (out, in) for Linear and (in, out) for the low-rank paths
            p.normal_(0.0, 1.0 / math.sqrt(max(p.shape[-1], p.shape[0])))
    return model.to(torch.bfloat16)


def packed_batch(mb: int, ctx: int, doc_len: int = 900) -> Batch:
    """Random tokens in documents of ~doc_len tokens (resets where they start), every target trained."""
    import numpy as np

    rng = np.random.default_rng(0)
    reset = np.zeros((mb, ctx), dtype=bool)
    reset[:, 0] = True
    reset[:, doc_len::doc_len] = True
    return Batch(
        tokens=rng.integers(1, 65536, (mb, ctx)).astype(np.int64),
        reset=reset,
        targets=rng.integers(1, 65536, (mb, ctx)).astype(np.int64),
        weight=np.ones((mb, ctx), dtype=np.float32),
    )


def run_one(
    preset: str,
    profile: str,
    ctx: int,
    mb: int,
    grad_ckpt: bool,
    steps: int,
    warmup: int,
    lora_r: int,
    trace: bool = False,
    packed: bool = True,
    compile_setting: str = "auto",
    graphs: str = "auto",
) -> dict[str, Any]:
    """One configuration as `rwkv1c train` runs it: build_model, the chunked loss, the step runner (CUDA graph
    or eager), fused AdamW. Timed over `steps` steps queued back to back (one sync at the end)."""
    cfg = dataclasses.replace(
        load_train_profile(profile), lora_r=lora_r, lora_alpha=2 * lora_r, grad_ckpt=grad_ckpt,
        compile=compile_setting, cuda_graphs=graphs, seed=0,
    )  # fmt: skip
    p = load_preset(preset)
    gc.collect()  # the previous configuration's model holds reference cycles (peft layers)
    torch.cuda.empty_cache()
    # each row compiles afresh, as a training run does: the previous rows' graphs would otherwise use up
    # dynamo's recompile limit (and turn the shapes dynamic)
    torch._dynamo.reset()
    model = random_model(p.n_layer, p.n_embd, "cuda")
    n_nonemb = sum(t.numel() for n, t in model.named_parameters() if n != "emb.weight")
    use = use_cuda_graphs(cfg.cuda_graphs, "cuda", 1, cfg.quant, 0.0, mb * ctx)
    model, _ = build_model(model, cfg, "cuda", graphs=use)  # as `rwkv1c train` builds it: quantisation, LoRA, COMPILE
    loss_module = build_loss_module(model, grad_ckpt, keep_rng=False)
    trainable = [t for t in model.parameters() if t.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=1e-4, betas=(0.9, 0.99), fused=True)
    notes: list[str] = []
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    runner = StepRunner(loss_module, trainable, "cuda", autocast, graphs=use, note=notes.append)
    batch = packed_batch(mb, ctx)
    if not packed:
        batch.reset[:] = False
        batch.reset[:, 0] = True

    def step() -> torch.Tensor:
        loss = runner(batch, 1.0 / (mb * ctx))
        torch.nn.utils.clip_grad_norm_(trainable, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=not runner.captured)
        return loss

    torch.cuda.synchronize()
    # the peak from the first step on: a captured graph's activations live in its pool, which the allocator
    # counts while it is built (warm-up and capture) but no longer once the graph exists
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        loss = step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / steps
    busy = gpu_busy(step, 3) if trace else None
    tokens_per_s = mb * ctx / step_s
    _, peak_tflops = card_peak_tflops()
    mfu = 4 * n_nonemb * tokens_per_s / (peak_tflops * 1e12) if peak_tflops else None
    row = {
        "preset": preset,
        "profile": profile,
        "ctx_len": ctx,
        "micro_bsz": mb,
        "grad_ckpt": grad_ckpt,
        "lora_r": lora_r,
        "compile": model.compile_blocks,
        "cuda_graphs": runner.captured,
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": None if mfu is None else round(mfu, 4),
        "step_s": round(step_s, 4),
        "loss": round(float(loss) * mb * ctx / max(mb * ctx, 1), 4),
        "non_embedding_params": n_nonemb,
        **({"gpu_busy": busy} if busy else {}),
        **({"notes": notes} if notes else {}),
    }
    return row  # the model, optimizer and graph go with this frame; the next row collects them first


def gpu_busy(step: Any, n: int) -> dict[str, Any]:
    """The profiler's kernel time (self CUDA) over the wall time of `n` steps, and the top kernels: how much
    of a step the GPU works, and where the rest goes."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    top = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:12]
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)
    print(table, file=sys.stderr)
    return {
        "wall_ms_per_step": round(wall * 1e3 / n, 2),
        "kernel_ms_per_step": round(kernel_us / 1e3 / n, 2),
        "busy": round(kernel_us / 1e6 / wall, 3),
        "launches_per_step": round(sum(e.count for e in events if e.key.startswith(("cudaLaunch", "cuLaunch"))) / n),
        "top_kernels_ms": {e.key[:80]: round(e.self_device_time_total / 1e3 / n, 3) for e in top},
    }


def grid(args: argparse.Namespace) -> list[tuple[str, str, int, int, bool]]:
    """The main table (micro-batch 1, each profile's checkpointing) per preset, each preset's extras right after."""
    rows = []
    extras = [e.split(":") for e in args.extra]
    for preset in args.presets:
        for profile in args.profiles:
            for ctx in args.ctx:
                rows.append((preset, profile, ctx, 1, load_train_profile(profile).grad_ckpt))
        for p, profile, ctx, mb, ckpt in extras:
            if p == preset:
                rows.append((preset, profile, int(ctx), int(mb), ckpt in ("1", "true", "on")))
    return rows


def ddp_check(out: Path, steps: int = 30) -> dict[str, Any]:
    """Train one small model on 1 GPU (micro-batch 2) and on 2 GPUs through torchrun (micro-batch 1 each):
    the same global batch, so the loss curves must agree up to bf16 summation order."""
    import tempfile

    import numpy as np

    from rwkv1c.commands.train import train
    from rwkv1c.data.binidx import BinIdxWriter
    from rwkv1c.model.init import init_state_dict, save_state_dict
    from rwkv1c.train.rundir import read_metrics

    root = Path(tempfile.mkdtemp())
    save_state_dict(init_state_dict(4, 256, 65536, seed=0, dtype=torch.bfloat16), root / "m.pth")
    rng = np.random.default_rng(0)
    with BinIdxWriter(root / "d") as w:
        for _ in range(400):
            start, step = int(rng.integers(1, 1000)), int(rng.integers(1, 4))
            w.add([(start + step * j) % 999 + 1 for j in range(int(rng.integers(50, 400)))] + [0])
    common: dict[str, Any] = {
        "model": root / "m.pth",
        "data": root / "d",
        "profile": "lora-bf16",
        "max_steps": steps,
        "ctx_len": 512,
        "grad_accum": 2,
        "lr": 2e-3,
        "device": "cuda",
        "runs_dir": root / "runs",
        "override": ("WARMUP_STEPS=5", "LOG_EVERY=1", "VAL_FRACTION=0", "SAVE_EVERY=1000"),
    }
    t0 = time.perf_counter()
    train(run="one", micro_bsz=2, devices=1, **common)
    t1 = time.perf_counter()
    code = train(run="two", micro_bsz=1, devices=2, **common)
    t2 = time.perf_counter()
    one = [r["loss"] for r in read_metrics(root / "runs" / "one" / "metrics.jsonl")]
    two = [r["loss"] for r in read_metrics(root / "runs" / "two" / "metrics.jsonl")]
    rel = [abs(a - b) / abs(a) for a, b in zip(one, two)]
    result = {
        "steps": steps,
        "exit_code_2gpu": code,
        "loss_1gpu": one,
        "loss_2gpu": two,
        "max_rel_diff": max(rel) if rel else None,
        "seconds_1gpu": t1 - t0,
        "seconds_2gpu": t2 - t1,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("loss")}), file=sys.stderr)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["rwkv7-0.4b", "rwkv7-1.5b", "rwkv7-3b"])
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES))
    parser.add_argument("--ctx", nargs="+", type=int, default=[1024, 4096])
    parser.add_argument(
        "--extra", nargs="*", default=[], help="more rows as PRESET:PROFILE:CTX:MICRO_BSZ:GRAD_CKPT(0/1)"
    )
    parser.add_argument("--ddp-check", type=Path, default=None, help="run the 1-vs-2-GPU loss check, write JSON")
    parser.add_argument("--trace", default=None, help="profile one row PRESET:PROFILE:CTX:MICRO_BSZ:GRAD_CKPT and stop")
    parser.add_argument("--unpacked", action="store_true", help="no document resets (no varlen WKV)")
    parser.add_argument(
        "--compile", choices=["auto", "on", "off"], default="auto", help="COMPILE as in training (auto: on, not int8)"
    )
    parser.add_argument(
        "--graphs", choices=["auto", "on", "off"], default="auto", help="CUDA_GRAPHS as in training (auto: not int8)"
    )
    parser.add_argument("--busy", action="store_true", help="profile every row: GPU kernel time over wall time")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lora-r", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train.json"))
    parser.add_argument("--vram-out", type=Path, default=None, help="also write the VRAM rows `rwkv1c plan` reads")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/train.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from rwkv1c.model.wkv import fla_available

    card, peak = card_peak_tflops()
    meta = {"card": card, "bf16_peak_tflops": peak, "torch": torch.__version__, "fla": fla_available()}
    print(json.dumps(meta), file=sys.stderr)
    if args.ddp_check:
        ddp_check(args.ddp_check)
        return 0
    if args.trace:
        preset, profile, ctx, mb, ckpt = args.trace.split(":")
        row = run_one(
            preset,
            profile,
            int(ctx),
            int(mb),
            ckpt == "1",
            args.steps,
            args.warmup,
            args.lora_r,
            True,
            not args.unpacked,
            args.compile,
            args.graphs,
        )
        print(json.dumps(row))
        return 0
    results: list[dict[str, Any]] = []
    for preset, profile, ctx, mb, ckpt in grid(args):
        where = {"preset": preset, "profile": profile, "ctx_len": ctx, "micro_bsz": mb, "grad_ckpt": ckpt,
                 "graphs": args.graphs}  # fmt: skip
        try:
            packed = not args.unpacked
            row = run_one(
                preset, profile, ctx, mb, ckpt, args.steps, args.warmup, args.lora_r, args.busy, packed, args.compile,
                args.graphs,
            )  # fmt: skip
        except torch.cuda.OutOfMemoryError:
            row = {**where, "error": "out of memory"}
            torch.cuda.empty_cache()
        except Exception as exc:  # keep measuring the other rows
            traceback.print_exc()
            row = {**where, "error": f"{type(exc).__name__}: {exc}"[:300]}
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**meta, "rows": results}, indent=1) + "\n")
    if args.vram_out:
        keys = ("preset", "profile", "ctx_len", "micro_bsz", "grad_ckpt", "lora_r", "peak_gib", "tokens_per_s")
        vram = [{k: r[k] for k in keys} for r in results if "error" not in r]
        args.vram_out.write_text(json.dumps({"card": card, "rows": vram}, indent=1) + "\n")
    print_table(results, card)
    return 0


def print_table(rows: list[dict[str, Any]], card: str) -> None:
    print(f"card: {card}")
    print("| model | profile | ctx | micro-batch | grad ckpt | tokens/s | MFU | peak VRAM (GiB) |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(
                f"| {r['preset']} | {r['profile']} | {r['ctx_len']} | {r['micro_bsz']} | "
                f"{'on' if r['grad_ckpt'] else 'off'} | {r['error']} | | |"
            )
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(
            f"| {r['preset']} | {r['profile']} | {r['ctx_len']} | {r['micro_bsz']} | "
            f"{'on' if r['grad_ckpt'] else 'off'} | {r['tokens_per_s']:,.0f} | {mfu} | {r['peak_gib']:.2f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
