"""`rwkv1c eval`'s loss pass from a cold process: tokens per second for the first and the second model.

    python bench/eval.py --data runs/lab/1c/val.jsonl --preset rwkv7-1.5b --out bench/results/eval.json

Random weights with the released shapes (`rwkv1c init --preset`, written once into --work); the real command
in a child process (imports, loading, kernel compilation and autotuning all count), two models evaluated
one after the other as a base-versus-tuned comparison does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="held-out JSONL (text rows)")
    p.add_argument("--preset", default="rwkv7-1.5b", help="model size")
    p.add_argument("--max-eval-tokens", type=int, default=71_000, help="token budget of the loss pass")
    p.add_argument("--work", type=Path, default=Path("runs/bench-eval"), help="where the models go")
    p.add_argument("--out", type=Path, default=Path("bench/results/eval.json"), help="results JSON")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    models = []
    for seed in (0, 1):
        path = args.work / f"{args.preset}-{seed}.pth"
        if not path.is_file():
            cmd = ["init", str(path), "--preset", args.preset, "--seed", str(seed)]
            subprocess.run([sys.executable, "-m", "rwkv1c", *cmd], check=True)
        models += ["--model", str(path)]
    report_dir = args.work / "report"
    t0 = time.perf_counter()
    cmd = ["eval", *models, "--data", str(args.data), "--output", str(report_dir), "--no-generation"]
    subprocess.run([sys.executable, "-m", "rwkv1c", *cmd, "--max-eval-tokens", str(args.max_eval_tokens)], check=True)
    wall = time.perf_counter() - t0
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    rows = [
        {
            "model": e["name"],
            "documents": e["loss"]["documents"],
            "tokens": e["loss"]["tokens"],
            "seconds": e["loss"]["seconds"],
            "tokens_per_s": e["loss"]["tokens_per_s"],
        }
        for e in report["entries"]
    ]
    result = {"preset": args.preset, "data": str(args.data), "process_seconds": round(wall, 1), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
