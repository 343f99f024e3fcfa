"""The 1C lab: does the pipeline make a model better at 1C? One seeded, resumable experiment on one GPU.

    base     `rwkv1c init` a 0.1B-shaped RWKV-7 (12 x 768) and pretrain it with the full-bf16 profile on
             code and Russian text that hold no 1C code (Python sources of this machine, Russian
             documentation text from Debian packages), so the tokens 1C uses are not new to it
    tune     harvest a 1C tree (`rwkv1c harvest`), `rwkv1c prepare`, then lora-bf16 and qlora-nf4 on its
             train split with the profiles' defaults and a fixed step budget
    measure  `rwkv1c eval` of the base and both tuned models on the validation split (bits per byte,
             the built-in tasks, validation completions), and the tuned model quantised (int8, nf4)

    python bench/onec_lab.py --work runs/lab --corpus ../shared/corpus/ssl-3.2-ru \\
        --russian /path/with/russian/docs --out bench/results/onec_lab.json

Every stage is a real `rwkv1c` command run in a child process; the work folder records the finished
stages, so running the same command again continues where it stopped (a training stage resumes from its
last checkpoint). `--base PATH` reuses a finished base, `--skip STAGE` leaves stages out, so the
tune-and-measure part can be repeated on another 1C tree in a few minutes. The Russian text and the
harvested 1C rows can be made on one machine and the rest run on another (`--stages`).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import lzma
import random
import re
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STAGES = ("corpus", "harvest", "prepare", "init", "pretrain", "tune-lora", "tune-qlora", "eval", "eval-quant")
# BSL's block keywords: a document that holds any of these as code is not allowed in the base corpus
BSL_MARKERS = re.compile(
    r"(?im)^\s*(КонецПроцедуры|КонецФункции|КонецЕсли|КонецЦикла|КонецПопытки|EndProcedure|EndFunction)\s*;?\s*$"
    r"|^\s*(Процедура|Функция)\s+[А-Яа-яЁё_][\wА-Яа-яЁё]*\s*\("
)
_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.S | re.I)
_TROFF = re.compile(r"^\.\S+\s*|\\f[BIRP]|\\-|\\\(\w\w|\\&|\\e|\\[ ()]", re.M)


def log(message: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rwkv1c(*args: str) -> float:
    """Run `python -m rwkv1c ARGS` (stdout and stderr pass through); its wall time in seconds."""
    t0 = time.perf_counter()
    log("rwkv1c " + " ".join(args))
    subprocess.run([sys.executable, "-m", "rwkv1c", *args], check=True)
    return round(time.perf_counter() - t0, 1)


# ---------------------------------------------------------------------------------------------- the base corpus


def code_texts(roots: list[Path], limit_mb: float) -> Iterator[str]:
    """Python sources under `roots` (tests and generated files skipped), in a stable order, up to a size."""
    budget = int(limit_mb * 2**20)
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if budget <= 0:
                return
            if any(part in ("tests", "test", "__pycache__") for part in path.parts) or path.stat().st_size > 400_000:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if len(text) > 200:
                budget -= len(text.encode())
                yield text


def russian_texts(roots: list[Path], limit_mb: float) -> Iterator[str]:
    """Russian prose from documentation: HTML pages with their tags stripped, man pages without troff."""
    budget = int(limit_mb * 2**20)
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if budget <= 0:
                return
            raw = path.read_bytes()
            if path.suffix == ".gz":
                try:
                    raw = gzip.decompress(raw)
                except OSError:
                    continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if path.suffix in (".html", ".htm") or "<html" in text[:500].lower():
                text = html.unescape(_TAGS.sub(" ", text))
            elif "/man" in path.as_posix():
                text = _TROFF.sub("", text)
            text = re.sub(r"[ \t]+", " ", re.sub(r"\n\s*\n+", "\n\n", text)).strip()
            cyrillic = sum("а" <= c.lower() <= "я" or c in "ёЁ" for c in text)
            if len(text) > 300 and cyrillic > 0.3 * len(text):
                budget -= len(text.encode())
                yield text


def build_corpus(
    work: Path, code: list[Path], russian: list[Path], code_mb: float, russian_mb: float, seed: int
) -> dict[str, Any]:
    """work/base.jsonl.xz: code and Russian documents shuffled, every document checked to hold no BSL."""
    docs, dropped = [], 0
    counts = {"code": 0, "russian": 0}
    for kind, texts in (("code", code_texts(code, code_mb)), ("russian", russian_texts(russian, russian_mb))):
        for text in texts:
            if BSL_MARKERS.search(text):
                dropped += 1
                continue
            docs.append(text)
            counts[kind] += 1
    random.Random(seed).shuffle(docs)
    out = work / "base.jsonl.xz"
    with lzma.open(out, "wt", encoding="utf-8") as f:
        for text in docs:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    size = sum(len(t.encode()) for t in docs)
    return {"documents": counts, "bytes": size, "dropped_for_bsl": dropped, "sha256": sha256(out)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_no_bsl(path: Path) -> int:
    """Documents of the base corpus that hold a BSL block keyword as code (must be 0)."""
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return sum(bool(BSL_MARKERS.search(json.loads(line)["text"])) for line in f)


# ---------------------------------------------------------------------------------------------- the stages


def run_stage(name: str, args: argparse.Namespace, state: dict[str, Any]) -> None:
    """One stage of the lab; its figures go into `state`."""
    w: Path = args.work
    base = Path(args.base) if args.base else w / "runs" / "base" / "model.pth"
    onec = args.harvested or w / "1c"
    runs = ["--runs-dir", str(w / "runs")]
    if name == "corpus":
        code = args.code or [Path(sysconfig.get_paths()["stdlib"])]
        state["corpus"] = build_corpus(w, code, args.russian, args.code_mb, args.russian_mb, args.seed)
    elif name == "harvest":
        if args.corpus is None:
            raise SystemExit("harvest needs --corpus DIR (or give --harvested DIR and --skip harvest)")
        (w / "1c").mkdir(parents=True, exist_ok=True)
        state["harvest_s"] = rwkv1c("harvest", str(args.corpus), "--output", str(w / "1c" / "train.jsonl"),
                                    "--validation-output", str(w / "1c" / "val.jsonl"),
                                    "--validation-fraction", str(args.validation_fraction))  # fmt: skip
    elif name == "prepare":
        corpus = w / "base.jsonl"
        with lzma.open(w / "base.jsonl.xz", "rb") as src:
            corpus.write_bytes(src.read())
        state["bsl_documents_in_base_corpus"] = check_no_bsl(w / "base.jsonl.xz")
        state["prepare_s"] = rwkv1c("prepare", str(corpus), "--output", str(w / "data" / "base"), "--workers", "8")
        rwkv1c("prepare", str(onec / "train.jsonl"), "--output", str(w / "data" / "1c"), "--workers", "8")
    elif name == "init":
        rwkv1c("init", str(w / "init.pth"), "--preset", "rwkv7-0.1b", "--seed", str(args.seed), "--overwrite")
    elif name == "pretrain":
        resume = ["--resume"] if (w / "runs" / "base" / "checkpoints").is_dir() else ["--overwrite"]
        state["pretrain_s"] = rwkv1c(
            "train", "--model", str(w / "init.pth"), "--data", str(w / "data" / "base"), "--profile", "full-bf16",
            "--run", "base", *runs, "--max-steps", str(args.pretrain_steps), "--ctx-len", str(args.pretrain_ctx),
            "--micro-bsz", str(args.pretrain_bsz), "--grad-accum", "1", "--lr", str(args.pretrain_lr),
            "--seed", str(args.seed), "--override", "WARMUP_STEPS=100", "VAL_FRACTION=0.005", "VAL_EVERY=500",
            "SAVE_EVERY=500", *resume,
        )  # fmt: skip
    elif name in ("tune-lora", "tune-qlora"):
        run = name.removeprefix("tune-")
        resume = ["--resume"] if (w / "runs" / run / "checkpoints").is_dir() else ["--overwrite"]
        state[f"{name}_s"] = rwkv1c(
            "train", "--model", str(base), "--data", str(w / "data" / "1c"), "--profile",
            "lora-bf16" if run == "lora" else "qlora-nf4", "--run", run, *runs, "--max-steps",
            str(args.tune_steps), "--seed", str(args.seed), "--val-data", str(onec / "val.jsonl"),
            "--val-every", str(max(args.tune_steps // 4, 1)), *resume,
        )  # fmt: skip
    elif name == "eval":
        state["eval_s"] = rwkv1c(
            "eval", "--model", str(base), "--adapter", str(w / "runs" / "lora" / "adapter"), "--adapter",
            str(w / "runs" / "qlora" / "adapter"), "--data", str(onec / "val.jsonl"), "--output", str(w / "report"),
            "--seed", str(args.seed), "--completions", str(args.completions),
        )  # fmt: skip
    elif name == "eval-quant":
        for quant in ("int8", "nf4"):
            state[f"eval_{quant}_s"] = rwkv1c(
                "eval", "--model", str(base), "--adapter", str(w / "runs" / "lora" / "adapter"), "--data",
                str(onec / "val.jsonl"), "--output", str(w / f"report-{quant}"), "--no-generation", "--quant", quant,
            )  # fmt: skip


def results(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    """The figures of every finished stage: reports, training summaries, timings."""
    w: Path = args.work
    out: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}, "stages": state}
    for name in ("report", "report-int8", "report-nf4"):
        path = w / name / "report.json"
        if path.is_file():
            out[name.replace("-", "_")] = json.loads(path.read_text(encoding="utf-8"))
    for run in ("base", "lora", "qlora"):
        metrics = w / "runs" / run / "metrics.jsonl"
        if metrics.is_file():
            rows = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if x.strip()]
            out[f"train_{run}"] = {
                "steps": rows[-1]["step"] if rows else 0,
                "first_loss": next((r["loss"] for r in rows if r.get("loss") is not None), None),
                "last_loss": next((r["loss"] for r in reversed(rows) if r.get("loss") is not None), None),
                "val_loss": next((r["val_loss"] for r in reversed(rows) if r.get("val_loss") is not None), None),
                "tokens_per_s": rows[-1].get("tokens_per_s") if rows else None,
            }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("runs/lab"), help="the lab's folder (default: runs/lab)")
    p.add_argument("--corpus", type=Path, default=None, help="the 1C tree to harvest (Designer dump or EDT project)")
    p.add_argument("--harvested", type=Path, default=None, help="a folder with train.jsonl + val.jsonl instead")
    p.add_argument("--code", type=Path, action="append", help="code for the base corpus (default: Python's stdlib)")
    p.add_argument("--russian", type=Path, action="append", default=[], help="Russian documentation folders")
    p.add_argument("--code-mb", type=float, default=24.0, help="megabytes of code in the base corpus")
    p.add_argument("--russian-mb", type=float, default=24.0, help="megabytes of Russian text in the base corpus")
    p.add_argument("--base", type=Path, default=None, help="a finished base .pth: skip init and pretraining")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="the stages to run")
    p.add_argument("--skip", nargs="+", choices=STAGES, default=[], help="stages to leave out")
    p.add_argument("--pretrain-steps", type=int, default=2500, help="optimizer steps of base pretraining")
    p.add_argument("--pretrain-ctx", type=int, default=512, help="tokens per pretraining window")
    p.add_argument("--pretrain-bsz", type=int, default=32, help="windows per pretraining step")
    p.add_argument("--pretrain-lr", type=float, default=1.5e-3, help="peak learning rate of pretraining")
    p.add_argument("--tune-steps", type=int, default=300, help="optimizer steps of each 1C tuning run")
    p.add_argument("--validation-fraction", type=float, default=0.1, help="share of 1C modules held out")
    p.add_argument("--completions", type=int, default=48, help="complete-the-method prompts in eval")
    p.add_argument("--seed", type=int, default=1234, help="the seed of every stage")
    p.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    state_file = args.work / "state.json"
    state: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {}
    skip = set(args.skip) | ({"init", "pretrain"} if args.base else set()) | ({"harvest"} if args.harvested else set())
    for name in args.stages:
        if name in skip or name in state.get("done", []):
            continue
        t0 = time.perf_counter()
        run_stage(name, args, state)
        state.setdefault("done", []).append(name)
        state.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        state_file.write_text(json.dumps(state, indent=2, ensure_ascii=False), encoding="utf-8")
    out = results(args, state)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in out.items() if k.startswith("train_")} | {"stages": state.get("seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
