"""Decode and prefill throughput of the inference engine on random weights with real RWKV-7 shapes.

    python bench/decode.py --sizes 0.4b 1.5b 2.9b --batches 1 16 64 256 --out bench/results/decode.json

For each size: build the model on the GPU with random weights (fp16 by default), then
- decode: `batch` prompts of 32 tokens through `Engine` (greedy, no stops) for --steps tokens each;
  tokens/s counts the steady state (every step after the first), with sampling, detokenisation and
  stop checks included, one host sync per step (what a user gets);
- graph step: the bare decode step (CUDA-graph replay + argmax, no host sync), per token;
- prefill: one prompt of T tokens through `Engine.prefill` (model.forward with the chunked kernel);
- peak memory: torch.cuda.max_memory_allocated during each measurement.
A correctness check (Triton step vs PyTorch step vs model.forward) runs first on the smallest size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rwkv1c.config import load_preset
from rwkv1c.model.config import ModelConfig
from rwkv1c.model.rwkv7 import RWKV7

PRESETS = {"0.1b": "rwkv7-0.1b", "0.4b": "rwkv7-0.4b", "1.5b": "rwkv7-1.5b", "2.9b": "rwkv7-3b", "7.2b": "rwkv7-7.2b"}


def random_model(size: str, dtype: torch.dtype, device: str = "cuda") -> RWKV7:
    """An RWKV7 of the given size with random weights scaled to keep activations O(1)."""
    preset = load_preset(PRESETS[size])  # n_layer, n_embd; the low-rank sizes as released
    L, C = preset.n_layer, preset.n_embd
    cfg = ModelConfig(n_layer=L, n_embd=C)  # the released low-rank sizes, 4x FFN, vocab 65536
    with torch.device("meta"):
        model = RWKV7(cfg)
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.split(".")[-1] if not name.endswith((".weight", ".bias")) else name.split(".")[-2]
            t = torch.empty(p.shape, device=device)
            if name.endswith(".bias"):
                t.normal_(0, 0.1, generator=g)
            elif leaf in ("ln0", "ln1", "ln2", "ln_out", "ln_x"):
                t.normal_(1, 0.2, generator=g)
            elif leaf.startswith("x_"):
                t.uniform_(0, 1, generator=g)
            elif leaf in ("w0", "a0", "v0"):
                t.normal_(0, 1, generator=g)
            elif leaf in ("k_k", "k_a"):
                t.uniform_(0.5, 1.5, generator=g)
            elif leaf == "r_k":
                t.normal_(0, 0.5, generator=g)
            elif leaf == "emb":
                t.normal_(0, 1, generator=g)
            elif p.dim() == 2 and name.endswith(".weight"):
                t.normal_(0, p.shape[1] ** -0.5, generator=g)
            else:  # low-rank factors (C, d) / (d, C)
                t.normal_(0, p.shape[0] ** -0.5, generator=g)
            p.copy_(t)
    return model.to(dtype).eval()


def check(size: str) -> dict[str, float]:
    """Max relative logit error (vs std) of the decode paths against model.forward, in fp32.

    fp32 with the exact chunked WKV as the reference: half precision on a deep random network is
    too sensitive to rounding for a comparison to mean anything (its logits move by O(1)).
    """
    from rwkv1c.infer.fast_decode import FastDecoder, decode_step_torch

    model = random_model(size, torch.float32)
    model.wkv_impl = "chunked"
    torch.manual_seed(0)
    B, T = 5, 6
    tokens = torch.randint(0, 65536, (B, T), device="cuda")
    with torch.no_grad():
        ref, _ = model(tokens)
    out: dict[str, float] = {}
    for name in ("torch", "triton", "graphs"):
        st = model.zero_state(8)
        dec = FastDecoder(model, kernels="torch" if name == "torch" else "triton", cuda_graphs=name == "graphs")
        steps = []
        for t in range(T):
            if name == "torch":
                with torch.inference_mode():
                    steps.append(
                        decode_step_torch(model, tokens[:, t], st.att_shift[:, :B], st.ffn_shift[:, :B], st.wkv[:, :B])
                    )
            else:
                steps.append(dec(tokens[:, t], st, B).clone())
        got = torch.stack(steps, 1)
        out[f"{name}_vs_forward"] = ((got - ref).abs().max() / ref.std()).item()
    return out


def bench_decode(engine: Any, batch: int, steps: int, prompt_len: int = 32) -> dict[str, float]:
    from rwkv1c.infer.engine import Request
    from rwkv1c.infer.sampling import SamplingParams

    params = SamplingParams(max_tokens=steps, temperature=0, stop_at_blank_line=False, stop_token_ids=())
    g = torch.Generator().manual_seed(batch)
    warm = dataclasses.replace(params, max_tokens=3)  # compiles kernels and captures this bucket's graph
    engine.generate([torch.randint(1, 65536, (prompt_len,), generator=g).tolist() for _ in range(batch)], warm)
    torch.cuda.reset_peak_memory_stats()
    reqs = [engine.submit(Request(torch.randint(1, 65536, (prompt_len,), generator=g).tolist(), params))
            for _ in range(batch)]  # fmt: skip
    engine.step()  # admission + prefill + first token
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n_steps = 0
    while engine.busy:
        engine.step()
        n_steps += 1
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    produced = sum(len(r.completion.token_ids) for r in reqs) - batch
    assert all(len(r.completion.token_ids) == steps for r in reqs)
    return {
        "tokens_per_s": produced / dt,
        "ms_per_step": 1e3 * dt / max(n_steps, 1),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


@torch.inference_mode()
def bench_graph_step(engine: Any, batch: int, iters: int = 50) -> dict[str, float]:
    """The bare step: graph replay + argmax, fed back on the device, no host sync inside the loop."""
    tokens = torch.randint(1, 65536, (batch,), device="cuda")
    for _ in range(3):
        tokens = engine.decoder(tokens, engine.slots, batch).argmax(-1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        tokens = engine.decoder(tokens, engine.slots, batch).argmax(-1)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / iters
    return {"graph_ms_per_step": dt * 1e3, "graph_tokens_per_s": batch / dt}


def bench_prefill(engine: Any, T: int, reps: int = 3) -> dict[str, float]:
    ids = torch.randint(1, 65536, (T,), generator=torch.Generator().manual_seed(T)).tolist()
    engine.cache.entries.clear()
    engine.prefill(ids)  # warm-up: kernel compilation / autotuning
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        engine.prefill(ids)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    dt = sorted(times)[len(times) // 2]
    return {"tokens_per_s": T / dt, "ms": dt * 1e3, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["1.5b", "0.4b", "2.9b"], choices=sorted(PRESETS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64, 256])
    ap.add_argument("--prefill", nargs="+", type=int, default=[1024, 4096])
    ap.add_argument("--steps", type=int, default=128, help="tokens generated per sequence in the decode runs")
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    ap.add_argument("--quants", nargs="+", default=["none"], choices=["none", "int8", "nf4"], help="QUANT of each row")
    ap.add_argument("--quant-head", action="store_true", help="quantise the head too (QUANT_HEAD)")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness check")
    ap.add_argument("--out", type=Path, default=Path("bench/results/decode.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench/decode.py needs a CUDA GPU", file=sys.stderr)
        return 1
    from rwkv1c.infer.engine import Engine
    from rwkv1c.model.tokenizer import get_tokenizer

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "steps": args.steps,
        "sizes": {},
    }
    tok = get_tokenizer()
    if not args.no_check:
        try:
            result["check"] = check("0.1b")
        except Exception as exc:
            result["check"] = {"error": f"{type(exc).__name__}: {exc}"}
        print("check (0.1b, fp32)", result["check"], file=sys.stderr, flush=True)
        torch.cuda.empty_cache()
    for size, quant in ((s, q) for s in args.sizes for q in args.quants):
        from rwkv1c.model.quant import quantize_for_inference

        t_build = time.perf_counter()
        model = random_model(size, dtype)
        params = sum(p.numel() for p in model.parameters())
        quantize_for_inference(model, quant, device="cuda", compute_dtype=dtype, head=args.quant_head)  # type: ignore[arg-type]
        torch.cuda.empty_cache()  # the fp16 matrices the quantised ones replaced
        row: dict[str, Any] = {"parameters": params, "quant": quant, "decode": {}, "prefill": {}}
        row["weights_gib"] = torch.cuda.memory_allocated() / 2**30
        engine = Engine(model, tok, max_batch=max(args.batches), prefix_cache_mb=0)
        row["build_s"] = time.perf_counter() - t_build
        for b in args.batches:
            t0 = time.perf_counter()
            try:
                d = bench_decode(engine, b, args.steps)
                d.update(bench_graph_step(engine, b))
            except Exception as exc:  # keep measuring the rest
                d = {"error": f"{type(exc).__name__}: {exc}"}
                engine.abort_all()
            d["wall_s"] = time.perf_counter() - t0
            row["decode"][str(b)] = d
            print(f"{size} {quant} decode b={b}: {d}", file=sys.stderr, flush=True)
        for T in args.prefill:
            try:
                p = bench_prefill(engine, T)
            except Exception as exc:
                p = {"error": f"{type(exc).__name__}: {exc}"}
            row["prefill"][str(T)] = p
            print(f"{size} {quant} prefill T={T}: {p}", file=sys.stderr, flush=True)
        result["sizes"][size if quant == "none" else f"{size}-{quant}"] = row
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))  # after every size: a timeout keeps what was measured
        del engine, model
        torch.cuda.empty_cache()
    print(table(result))
    return 0


def table(result: dict[str, Any]) -> str:
    """A Markdown table of the results."""
    lines = [
        f"{result['device']}, {result['dtype']}, random weights",
        "",
        "| model | decode b=1 | b=16 | b=64 | b=256 | prefill T=1024 | T=4096 | peak mem |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, row in result["sizes"].items():
        dec = [row["decode"].get(str(b), {}).get("tokens_per_s", math.nan) for b in (1, 16, 64, 256)]
        pre = [row["prefill"].get(str(T), {}).get("tokens_per_s", math.nan) for T in (1024, 4096)]
        mems = [d["peak_mem_gib"] for d in (*row["decode"].values(), *row["prefill"].values()) if "peak_mem_gib" in d]
        peak = max(mems, default=math.nan)
        cells = [f"{x:,.0f}" for x in (*dec, *pre)]
        lines.append(f"| {size} | " + " | ".join(cells) + f" | {peak:.1f} GiB |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
