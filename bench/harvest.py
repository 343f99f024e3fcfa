"""Throughput of `rwkv1c harvest` (modules/s and MB/s of BSL read) on a configuration dump.

    .venv/bin/python bench/harvest.py [SRC_DIR] [--repeat 3] [--write-results]

SRC_DIR defaults to ../shared/corpus/ssl-3.2-ru next to the repository. Timings cover the whole
harvest in memory (read, classify, de-duplicate, parse, build and tokenize samples); the stage
`parse` times the BSL lexer and checker alone. --write-results saves bench/results/harvest.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "ssl-3.2-ru"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src_dir", nargs="?", type=Path, default=DEFAULT_CORPUS, help="configuration sources")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (the best one is reported)")
    parser.add_argument("--write-results", action="store_true", help="write bench/results/harvest.json")
    args = parser.parse_args()
    if not args.src_dir.is_dir():
        print(f"no such folder: {args.src_dir}", file=sys.stderr)
        return 1

    from rwkv1c.onec import bsl
    from rwkv1c.onec.harvest import HarvestSettings, default_encoder, discover, harvest_tree, read_source

    encode = default_encoder()
    paths = discover(args.src_dir)
    texts = [t for t in (read_source(p)[0] for p in paths) if t is not None]
    n_bytes = sum(p.stat().st_size for p in paths)
    text_bytes = sum(len(t.encode()) for t in texts)

    parse_times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for text in texts:
            bsl.parse_module(text)
        parse_times.append(time.perf_counter() - t0)

    harvest_times = []
    summary = {}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = harvest_tree(args.src_dir, HarvestSettings(), encode=encode)
        harvest_times.append(time.perf_counter() - t0)
        summary = result.summary

    best_h, best_p = min(harvest_times), min(parse_times)
    report = {
        "source": str(args.src_dir),
        "files": len(paths),
        "modules_read": summary["modules_read"],
        "bytes_on_disk": n_bytes,
        "harvest_seconds": round(best_h, 3),
        "harvest_modules_per_s": round(len(paths) / best_h, 1),
        "harvest_mb_per_s": round(n_bytes / best_h / 1e6, 2),
        "parse_seconds": round(best_p, 3),
        "parse_modules_per_s": round(len(texts) / best_p, 1),
        "parse_mb_per_s": round(text_bytes / best_p / 1e6, 2),
        "rows": summary["train"]["rows"] + summary["validation"]["rows"],
        "tokens": summary["train"]["tokens"] + summary["validation"]["tokens"],
        "repeat": args.repeat,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(
        f"harvest: {report['harvest_modules_per_s']} modules/s, {report['harvest_mb_per_s']} MB/s "
        f"({len(paths)} files, {n_bytes / 1e6:.1f} MB, best of {args.repeat}: {best_h:.2f} s)"
    )
    print(f"parse+check: {report['parse_modules_per_s']} modules/s, {report['parse_mb_per_s']} MB/s")
    if args.write_results:
        out = REPO / "bench" / "results" / "harvest.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
