"""Throughput of `rwkv1c prepare` (MB/s of JSONL input, tokens/s) on real 1C:Enterprise code.

    .venv/bin/python bench/prepare.py [CORPUS_DIR] [--repeat 5] [--copies 1 8] [--workers 1 2] [--wait-idle]
                                      [--write-results]

CORPUS_DIR defaults to ../shared/corpus/ssl-3.2-ru next to the repository. Its .bsl modules become a
JSONL file in a temporary folder, one module per row ({"text": ...}, BOM removed, CRLF kept); --copies K
writes every module K times, for a file large enough to show the steady rate (several values give one
row each).

Each timed run is the real command in a fresh process, `python -m rwkv1c prepare IN --output OUT
--workers N`, timed by wall clock from start to exit: interpreter start, imports and the tokenizer build
are included. Runs of the different --workers values are interleaved; the best and the median of
--repeat runs are reported with the CPU time of all processes and the load average, because the
machine may be shared; --wait-idle (Linux) starts each round only once the CPUs have been idle for a
moment. --write-results saves bench/results/prepare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "ssl-3.2-ru"


def build_jsonl(corpus: Path, path: Path, copies: int) -> tuple[int, int]:
    """Write one row per non-empty .bsl module of ``corpus``; returns (modules, bytes written)."""
    texts = []
    for module in sorted(corpus.rglob("*.bsl")):
        text = module.read_bytes().decode("utf-8-sig")
        if text.strip():
            texts.append(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(copies):
            f.writelines(texts)
    return len(texts), path.stat().st_size


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def idle_fraction(seconds: float = 1.5) -> float:
    """Share of CPU time spent idle over the next ``seconds`` (from /proc/stat; 1.0 = nothing else runs)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(total1 - total0, 1)


def wait_until_idle(threshold: float = 0.9, patience_s: float = 600.0) -> float:
    """Wait (up to ``patience_s``) until other processes leave the CPUs idle; returns the idle share seen."""
    deadline = time.monotonic() + patience_s
    while True:
        idle = idle_fraction()
        if idle >= threshold or time.monotonic() > deadline:
            return idle


def time_prepare(jsonl: Path, out: Path, workers: int) -> dict:
    """One run of the command in a fresh interpreter: wall and CPU seconds, and the tokens it reports."""
    cmd = [sys.executable, "-m", "rwkv1c", "prepare", str(jsonl), "--output", str(out), "--workers", str(workers)]
    cpu0, t0 = children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"prepare failed:\n{done.stderr}")
    tokens = int(re.search(r"^tokens\s+([\d,]+)", done.stdout, re.M).group(1).replace(",", ""))  # type: ignore[union-attr]
    return {"wall_s": wall, "cpu_s": cpu, "tokens": tokens, "load": os.getloadavg()[0]}


def summarise(runs: dict[int, list[dict]], n_bytes: int, copies: int) -> list[dict]:
    """One row per --workers value: best and median wall clock, rates, CPU time, load."""
    rows = []
    for w, results in runs.items():
        walls = [r["wall_s"] for r in results]
        best, median = min(walls), statistics.median(walls)
        tokens = results[0]["tokens"]
        rows.append(
            {
                "copies": copies,
                "jsonl_bytes": n_bytes,
                "workers": w,
                "best_s": round(best, 3),
                "median_s": round(median, 3),
                "best_mb_per_s": round(n_bytes / best / 1e6, 1),
                "median_mb_per_s": round(n_bytes / median / 1e6, 1),
                "best_tokens_per_s": round(tokens / best),
                "cpu_s_median": round(statistics.median(r["cpu_s"] for r in results), 3),
                "load_avg_1min": [round(r["load"], 2) for r in results],
                "idle_before": [None if r["idle_before"] is None else round(r["idle_before"], 3) for r in results],
                "tokens": tokens,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS, help="folder of .bsl modules")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per setting")
    parser.add_argument("--copies", type=int, nargs="+", default=[1], help="write every module this many times")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="values of --workers to time")
    parser.add_argument("--wait-idle", action="store_true", help="start each round only when the CPUs are idle")
    parser.add_argument("--write-results", action="store_true", help="write bench/results/prepare.json")
    args = parser.parse_args()
    if not args.corpus.is_dir():
        print(f"no such folder: {args.corpus}", file=sys.stderr)
        return 1

    rows: list[dict] = []
    modules = 0
    for copies in args.copies:
        with tempfile.TemporaryDirectory(prefix="rwkv1c-bench-prepare-") as tmp:
            jsonl = Path(tmp) / "modules.jsonl"
            modules, n_bytes = build_jsonl(args.corpus, jsonl, copies)
            print(f"input: {modules} modules x {copies} = {n_bytes / 1e6:.1f} MB of JSONL ({args.corpus})")
            runs: dict[int, list[dict]] = {w: [] for w in args.workers}
            time_prepare(jsonl, Path(tmp) / "warmup", args.workers[0])  # page cache, .pyc files
            for _ in range(args.repeat):
                idle = wait_until_idle() if args.wait_idle else None
                for w in args.workers:
                    runs[w].append({**time_prepare(jsonl, Path(tmp) / f"w{w}", w), "idle_before": idle})
        rows += summarise(runs, n_bytes, copies)

    print(
        f"{'MB':>6} {'workers':>7} {'best s':>7} {'median s':>8} {'MB/s best':>9} {'MB/s med':>8} "
        f"{'tok/s best':>11} {'cpu s':>6}  load (1 min)"
    )
    for r in rows:
        print(
            f"{r['jsonl_bytes'] / 1e6:>6.1f} {r['workers']:>7} {r['best_s']:>7.2f} {r['median_s']:>8.2f} "
            f"{r['best_mb_per_s']:>9.1f} {r['median_mb_per_s']:>8.1f} {r['best_tokens_per_s']:>11,} "
            f"{r['cpu_s_median']:>6.2f}  {min(r['load_avg_1min']):.1f}..{max(r['load_avg_1min']):.1f}"
        )

    if args.write_results:
        report = {
            "what": "wall clock of `python -m rwkv1c prepare` in a fresh process, JSONL of .bsl modules",
            "corpus": str(args.corpus),
            "modules": modules,
            "repeat": args.repeat,
            "wait_idle": args.wait_idle,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "results": rows,
        }
        out = REPO / "bench" / "results" / "prepare.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
