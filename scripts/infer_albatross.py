#!/usr/bin/env python3
"""The old inference entry point, kept for existing scripts: now a thin wrapper of `rwkv1c`'s engine.

Nothing is cloned or compiled any more. The old flags still work:

    python scripts/infer_albatross.py --model models/base/rwkv7-g1-1.5b.pth --prompt "User: hi\\n\\nAssistant:" \\
        --tokens 128 --batch 2

--tokens is the number of new tokens, --batch the number of samples of the one prompt. --noise 0 (the
default) is greedy decoding, as before; --noise > 0 samples at --temperature instead. --albatross-dir,
--tokenizer and --auto-clone are accepted and ignored. The samples go to stdout in the old layout
("[sample i]", prompt + completion, a rule); diagnostics go to stderr.

For everything else (adapters, JSONL files, stop strings, chat, an HTTP API) use `rwkv1c generate`,
`rwkv1c chat` and `rwkv1c serve`; see docs/inference.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run RWKV-7 inference with the rwkv1c engine (old flags kept).")
    p.add_argument("--model", required=True, help="checkpoint: a .pth file, or its path without .pth")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--tokens", type=int, default=128, help="new tokens per sample (default: 128)")
    p.add_argument("--batch", type=int, default=1, help="samples of the same prompt, decoded together (default: 1)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature when --noise > 0")
    p.add_argument("--noise", type=float, default=0.0, help="0 = greedy (default); > 0 = sample at --temperature")
    p.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    p.add_argument("--adapter", type=Path, default=None, help="an adapter folder applied on top of --model")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to run")
    for old in ("--albatross-dir", "--tokenizer"):
        p.add_argument(old, default=None, help="ignored (no longer needed)")
    p.add_argument("--auto-clone", action="store_true", help="ignored (nothing is cloned any more)")
    return p.parse_args(argv)


def model_path(arg: str) -> Path:
    """Accept a .pth path or the old prefix form (the path without .pth)."""
    path = Path(arg).expanduser()
    return path if path.suffix == ".pth" else path.with_name(path.name + ".pth")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rwkv1c.errors import UserError
    from rwkv1c.infer.engine import describe, load_engine
    from rwkv1c.infer.sampling import SamplingParams

    if args.albatross_dir or args.tokenizer or args.auto_clone:
        print(
            "note: --albatross-dir, --tokenizer and --auto-clone are no longer needed and are ignored", file=sys.stderr
        )
    problems = [m for ok, m in ((args.tokens >= 0, "--tokens must be >= 0"), (args.batch >= 1, "--batch must be >= 1"),
                                (args.temperature > 0, "--temperature must be > 0")) if not ok]  # fmt: skip
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 1
    try:
        engine = load_engine(model_path(args.model), args.adapter, device=args.device, max_batch=args.batch)
        print(describe(engine), file=sys.stderr)
        greedy = args.noise == 0
        params = SamplingParams(
            max_tokens=args.tokens,
            temperature=0.0 if greedy else args.temperature,
            top_p=1.0,
            stop_at_blank_line=False,
        )
        per_sample = [params.with_seed(args.seed + i) for i in range(args.batch)]
        t0 = time.perf_counter()
        done = engine.generate([args.prompt] * args.batch, per_sample)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    made = sum(len(c.token_ids) for c in done)
    print(f"done: {made} tokens in {dt:.2f} s ({made / max(dt, 1e-9):.1f} tokens/s)", file=sys.stderr)
    for i, c in enumerate(done):
        print(f"[sample {i}]")
        print(args.prompt + c.text)
        print("-" * 80)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
