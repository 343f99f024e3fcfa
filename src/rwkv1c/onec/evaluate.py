"""Models compared side by side on held-out 1C code (what `rwkv1c eval` runs).

Two measurements per model (a `.pth`, or a base `.pth` with a LoRA adapter folder on top):

1. Loss on held-out text: the mean negative log-likelihood per token and the bits per UTF-8 byte,
   ``sum(NLL in nats) / ln 2 / bytes``. Bits per byte do not depend on the tokenizer, so they compare any
   two models. Each document is scored from a token-0 context (the document separator), long documents
   in chunks that carry the recurrent state, so the result equals one pass over the whole document.
2. Generation on a prompt set: the built-in 1C tasks (``rwkv1c/assets/eval_tasks.jsonl``) and
   complete-the-method prompts taken from the validation file. Answers are decoded greedily and scored
   for BSL structural validity (``bsl.check_structure``), keyword-language consistency (the share
   of keywords written in the prompt's language), foreign syntax (Python / JavaScript / SQL constructs
   outside strings) and, for the built-in tasks, the share of expected constructs present. The true
   continuations of the completion prompts are scored the same way as a reference.

The report is ``report.json``, ``report.md``, ``report.png`` and ``generations.jsonl`` in the output folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from rwkv1c.config import Quant
from rwkv1c.errors import UserError, raise_all
from rwkv1c.fsutil import atomic_open, atomic_path, write_json
from rwkv1c.model.adapter import PromptFormat, read_adapter_config
from rwkv1c.model.loader import Device, DType
from rwkv1c.onec import bsl
from rwkv1c.text import normalize_newlines


@dataclass(frozen=True)
class Entry:
    """One model under evaluation."""

    name: str
    model: Path
    adapter: Path | None = None


@dataclass(frozen=True)
class Prompt:
    """One generation prompt. ``prefix`` is code the answer continues (completion prompts)."""

    id: str
    set: Literal["builtin", "completion"]
    language: Literal["ru", "en"]
    user: str
    prefix: str = ""
    reference: str = ""
    expect: tuple[str, ...] = ()
    topic: str = ""


@dataclass
class EvalPlan:
    """Everything `run` needs, validated."""

    entries: list[Entry]
    documents: list[str]
    prompts: list[Prompt]
    output: Path
    device: str
    dtype: Any
    max_new_tokens: int
    batch_size: int
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)
    quant: Quant = "none"
    quantize_head: bool = False


# -- inputs ------------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a JSONL file and the problems found (line numbers named)."""
    rows, problems = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{n}: not JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                problems.append(f"{path}:{n}: expected an object")
                continue
            rows.append(row)
    return rows, problems


def builtin_tasks() -> list[dict[str, Any]]:
    """The built-in 1C prompt set shipped with the package."""
    text = resources.files("rwkv1c").joinpath("assets/eval_tasks.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def task_prompts(rows: Sequence[dict[str, Any]], source: str) -> tuple[list[Prompt], list[str]]:
    """Prompts from task rows ``{"id", "prompt", "language"?, "expect"?, "topic"?}``."""
    prompts, problems = [], []
    for i, row in enumerate(rows):
        text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{source}: row {i + 1} has no 'prompt' string")
            continue
        language = row.get("language") or ("ru" if re.search("[А-Яа-яЁё]", text) else "en")
        if language not in ("ru", "en"):
            problems.append(f"{source}: row {i + 1}: language must be 'ru' or 'en', got {language!r}")
            continue
        expect = tuple(row.get("expect") or ())
        for pattern in expect:
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.append(f"{source}: row {i + 1}: bad expect pattern {pattern!r} ({exc})")
        prompts.append(
            Prompt(
                id=str(row.get("id") or f"task-{i + 1}"),
                set="builtin",
                language="en" if language == "en" else "ru",
                user=text.strip(),
                expect=expect,
                topic=str(row.get("topic", "")),
            )
        )
    return prompts, problems


def completion_prompts(rows: Sequence[dict[str, Any]], count: int, seed: int, max_chars: int = 4000) -> list[Prompt]:
    """Up to ``count`` complete-the-method prompts of a harvested validation file, chosen by a seeded hash."""
    candidates = []
    for row in rows:
        user = row.get("prompt")  # harvest's instruction rows carry prompt / response beside text
        if row.get("task") != "complete" or not isinstance(user, str):
            continue
        reference = str(row.get("response", ""))
        if len(user) > max_chars or "\n" not in user:
            continue
        key = f"{seed}:{row.get('source', '')}:{row.get('method', '')}:{user}"
        candidates.append((hashlib.sha256(key.encode()).hexdigest(), row, user, reference))
    candidates.sort(key=lambda c: c[0])
    prompts = []
    for digest, row, user, reference in candidates[:count]:
        prompts.append(
            Prompt(
                id=f"complete-{digest[:10]}",
                set="completion",
                language="en" if row.get("language") == "en" else "ru",
                user=user,
                prefix=user.split("\n", 1)[1],
                reference=reference,
                topic=str(row.get("module_kind", "")),
            )
        )
    return prompts


def loss_documents(rows: Sequence[dict[str, Any]], max_tokens: int, count_tokens: Any) -> list[str]:
    """Held-out texts for the loss: ``text`` rows (``task`` "text" or absent), in file order, up to a budget."""
    texts = [r["text"] for r in rows if isinstance(r.get("text"), str) and r.get("task", "text") == "text"]
    if not texts:  # a file of instruction rows only: score their full text
        texts = [r["text"] for r in rows if isinstance(r.get("text"), str)]
    chosen: list[str] = []
    total = 0
    for text in texts:
        if not text.strip():
            continue
        if chosen and total >= max_tokens:
            break
        chosen.append(text)
        total += count_tokens(text)
    return chosen


def entries_for(models: Sequence[Path], adapters: Sequence[Path]) -> list[Entry]:
    """One entry per model, plus one per adapter applied to the first model; names made unique."""
    entries = [Entry(m.stem, m) for m in models]
    entries += [Entry(f"{models[0].stem}+{a.name}", models[0], a) for a in adapters]
    seen: dict[str, int] = {}
    named = []
    for e in entries:
        seen[e.name] = seen.get(e.name, 0) + 1
        named.append(e if seen[e.name] == 1 else Entry(f"{e.name}#{seen[e.name]}", e.model, e.adapter))
    return named


# -- measurements ------------------------------------------------------------------------------------------


LOSS_CHUNK = 512  # tokens per forward call of the loss pass: every call has the same shape
LOSS_BATCH_TOKENS = 8192  # documents scored side by side: rows = this // LOSS_CHUNK
HEAD_POSITIONS = 1024  # positions whose logits exist at once (fp32 logits of 1024 x 65536: 256 MiB)


def documents_nll(
    model: Any,
    documents: Sequence[Sequence[int]],
    *,
    chunk: int = LOSS_CHUNK,
    rows: int | None = None,
    fixed: bool | None = None,
) -> list[float]:
    """Sum of the token negative log-likelihoods (nats) of each document, each token predicted from what
    precedes it, the first from token 0 (the document separator).

    Documents are scored side by side, `rows` at a time (longest first), in calls of `chunk` tokens
    that carry the recurrent state; shorter documents are padded, their positions weighted zero, and
    padding after a document's end never reaches its earlier positions. With `fixed` (default: on a GPU)
    every call has exactly the shape (rows, chunk), so kernels are compiled and autotuned once; without,
    nothing is padded beyond the group's longest document.
    """
    import torch
    import torch.nn.functional as F

    device = model.emb.weight.device
    fixed = device.type == "cuda" if fixed is None else fixed
    rows = rows or max(1, LOSS_BATCH_TOKENS // chunk)
    order = sorted(range(len(documents)), key=lambda i: -len(documents[i]))
    totals = [0.0] * len(documents)
    for lo in range(0, len(order), rows):
        group = order[lo : lo + rows]
        length = max((len(documents[i]) for i in group), default=0)
        width = max(chunk, -(-length // chunk) * chunk) if fixed else max(length, 1)
        n_rows = rows if fixed else len(group)
        inputs = torch.zeros(n_rows, width, dtype=torch.long)
        targets = torch.zeros(n_rows, width, dtype=torch.long)
        weight = torch.zeros(n_rows, width)
        for r, i in enumerate(group):
            ids = torch.tensor(list(documents[i]), dtype=torch.long)
            inputs[r, 1 : len(ids)] = ids[:-1]
            targets[r, : len(ids)] = ids
            weight[r, : len(ids)] = 1.0
        inputs, targets, weight = inputs.to(device), targets.to(device), weight.to(device)
        sums = torch.zeros(n_rows, device=device)
        state = None
        with torch.no_grad():
            for start in range(0, width, chunk):
                if not bool(weight[:, start:].any()):
                    break
                hidden, state = model(inputs[:, start : start + chunk], state, return_hidden=True)
                flat = hidden.reshape(-1, hidden.shape[-1])
                tgt = targets[:, start : start + chunk].reshape(-1)
                w = weight[:, start : start + chunk].reshape(-1)
                nll = torch.empty_like(w)
                for p in range(0, flat.shape[0], HEAD_POSITIONS):
                    logits = model.head(flat[p : p + HEAD_POSITIONS]).float()
                    nll[p : p + HEAD_POSITIONS] = F.cross_entropy(logits, tgt[p : p + HEAD_POSITIONS], reduction="none")
                sums += (nll * w).view(n_rows, -1).sum(-1)
        for r, i in enumerate(group):
            totals[i] = float(sums[r])
    return totals


def measure_loss(model: Any, tokenizer: Any, documents: Sequence[str]) -> dict[str, Any]:
    """Mean NLL per token (nats) and bits per UTF-8 byte over ``documents``."""
    import torch

    t0 = time.perf_counter()
    ids = tokenizer.encode_batch(list(documents))
    nll = sum(documents_nll(model, ids))
    if model.emb.weight.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = sum(len(x) for x in ids)
    n_bytes = sum(len(text.encode("utf-8")) for text in documents)
    return {
        "documents": len(documents),
        "tokens": tokens,
        "bytes": n_bytes,
        "nll_sum": nll,
        "loss": nll / tokens if tokens else float("nan"),
        "bits_per_byte": nll / math.log(2) / n_bytes if n_bytes else float("nan"),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
    }


def generate_answers(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int, seed: int
) -> list[tuple[str, int, str]]:
    """Greedy answers (text, new tokens, finish reason) through `rwkv1c.infer.engine.Engine`."""
    from rwkv1c.infer.engine import Engine
    from rwkv1c.infer.sampling import SamplingParams

    engine = Engine(model, tokenizer, max_batch=batch_size, prefix_cache_mb=0)
    # an answer ends at the chat format's turn end, a blank line
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop_at_blank_line=True, seed=seed)
    out = engine.generate(list(prompts), params)
    return [(c.text, len(c.token_ids), c.finish_reason) for c in out]


def score_answer(answer: str, prompt: Prompt) -> dict[str, Any]:
    """Scores of one answer: structure, keyword language, foreign syntax, expected constructs."""
    code, fenced = bsl.extract_code(answer)
    code = normalize_newlines(code)
    whole = f"{prompt.prefix}\n{code}" if prompt.prefix else code
    parsed = bsl.parse_module(whole)
    problems = parsed.problems
    own = bsl.parse_module(code) if prompt.prefix else parsed
    # code = a complete method or a statement ending in ";" (random text has neither)
    has_code = bool(parsed.methods) or ";" in bsl.code_only(code)
    share = bsl.keyword_share(own, prompt.language)
    foreign = bsl.foreign_syntax(code)
    expect_hits = [bool(re.search(p, code, re.IGNORECASE)) for p in prompt.expect]
    return {
        "has_code": has_code,
        "structural_valid": has_code and not problems,
        "problems": [str(p) for p in problems[:3]],
        "keyword_language": bsl.keyword_language(own)[0],
        "language_share": share,
        "foreign": foreign,
        "fenced": fenced,
        "expect_hit": sum(expect_hits) / len(expect_hits) if expect_hits else None,
    }


def aggregate(scored: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rates over a list of scored answers (answers without keywords count as inconsistent)."""
    n = len(scored)
    if not n:
        return {"prompts": 0}
    expect = [s["expect_hit"] for s in scored if s.get("expect_hit") is not None]
    lengths = [s["new_tokens"] for s in scored if "new_tokens" in s]
    out = {
        "prompts": n,
        "has_code": sum(s["has_code"] for s in scored) / n,
        "structural_valid": sum(s["structural_valid"] for s in scored) / n,
        "language_consistency": sum(s["language_share"] or 0.0 for s in scored) / n,
        "foreign_free": sum(not s["foreign"] for s in scored) / n,
        "expect_hit": sum(expect) / len(expect) if expect else None,
    }
    if lengths:
        out["truncated"] = sum(s["finish_reason"] == "length" for s in scored) / n
        out["mean_new_tokens"] = sum(lengths) / len(lengths)
    return out


# -- setup and run -----------------------------------------------------------------------------------------


def setup(
    *,
    model: Sequence[Path],
    data: Path,
    output: Path,
    adapter: Sequence[Path] = (),
    tasks: Path | None = None,
    builtin: bool = True,
    completions: int = 24,
    max_new_tokens: int = 384,
    max_eval_tokens: int = 200_000,
    generation: bool = True,
    device: Device = "auto",
    dtype: DType = "auto",
    batch_size: int = 16,
    seed: int = 1234,
    quant: Quant = "none",
    quantize_head: bool = False,
) -> EvalPlan:
    """Check every argument and input file, and gather the documents and prompts."""
    problems: list[str] = []
    if not model:
        problems.append("give at least one --model")
    for m in model:
        if not Path(m).is_file():
            problems.append(f"model file not found: {m}")
    for a in adapter:
        try:
            read_adapter_config(Path(a))
        except UserError as exc:
            problems.append(str(exc))
    if not data.is_file():
        problems.append(f"data file not found: {data}")
    if tasks is not None and not tasks.is_file():
        problems.append(f"tasks file not found: {tasks}")
    if output.exists() and not output.is_dir():
        problems.append(f"--output must be a folder: {output}")
    for name, value, low in (
        ("--completions", completions, 0),
        ("--max-new-tokens", max_new_tokens, 1),
        ("--max-eval-tokens", max_eval_tokens, 1),
        ("--batch-size", batch_size, 1),
    ):
        if value < low:
            problems.append(f"{name} must be >= {low}, got {value}")
    raise_all(problems, "cannot evaluate")

    from rwkv1c.model.loader import resolve_device, resolve_dtype
    from rwkv1c.model.tokenizer import get_tokenizer

    rows, bad = read_jsonl(data)
    tokenizer = get_tokenizer()
    documents = loss_documents(rows, max_eval_tokens, lambda t: len(tokenizer.encode(t)))
    if not documents:
        bad.append(f"{data}: no rows with a non-empty 'text' field to measure the loss on")
    prompts = gather_prompts(rows, builtin, tasks, completions, seed, bad) if generation else []
    raise_all(bad, "bad evaluation inputs")
    dev = resolve_device(device)
    settings = {
        "data": str(data),
        "tasks": str(tasks) if tasks else None,
        "builtin": builtin,
        "completions": completions,
        "max_new_tokens": max_new_tokens,
        "max_eval_tokens": max_eval_tokens,
        "generation": generation,
        "device": dev,
        "dtype": dtype,
        "seed": seed,
        "decoding": "greedy",
        "quant": quant,
        "quantize_head": quantize_head,
    }
    return EvalPlan(
        entries=entries_for([Path(m) for m in model], [Path(a) for a in adapter]),
        documents=documents,
        prompts=prompts,
        output=output,
        device=dev,
        dtype=resolve_dtype(dtype, dev),
        quant=quant,
        quantize_head=quantize_head,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        settings=settings,
    )


def gather_prompts(
    rows: Sequence[dict[str, Any]], builtin: bool, tasks: Path | None, completions: int, seed: int, bad: list[str]
) -> list[Prompt]:
    """The generation prompts: built-in tasks, an extra task file, completions from the data; problems to `bad`."""
    prompts: list[Prompt] = []
    if builtin:
        found, errs = task_prompts(builtin_tasks(), "built-in tasks")
        prompts += found
        bad += errs
    if tasks is not None:
        task_rows, errs = read_jsonl(tasks)
        found, errs2 = task_prompts(task_rows, str(tasks))
        prompts += found
        bad += errs + errs2
    prompts += completion_prompts(rows, completions, seed)
    ids = [p.id for p in prompts]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        bad.append(f"prompt ids repeat: {', '.join(dupes[:5])}")
    return prompts


def run(plan: EvalPlan) -> dict[str, Any]:
    """Evaluate every entry; returns the report and writes generations.jsonl into the output folder."""
    import torch

    from rwkv1c.model.loader import load_model
    from rwkv1c.model.tokenizer import get_tokenizer

    tokenizer = get_tokenizer()
    plan.output.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"settings": plan.settings, "entries": []}
    generations: list[dict[str, Any]] = []
    for entry in plan.entries:
        print(f"eval: {entry.name}: loading", file=sys.stderr)
        net = load_model(entry.model, entry.adapter, device=plan.device, dtype=plan.dtype, quant=plan.quant,
                         quantize_head=plan.quantize_head)  # fmt: skip
        loss = measure_loss(net, tokenizer, plan.documents)
        print(
            f"eval: {entry.name}: loss {loss['loss']:.4f}, {loss['bits_per_byte']:.4f} bits/byte "
            f"({loss['tokens']} tokens, {loss['seconds']:.1f} s)",
            file=sys.stderr,
        )
        fmt = prompt_format_of(entry)
        result: dict[str, Any] = {
            "name": entry.name,
            "model": str(entry.model),
            "adapter": str(entry.adapter) if entry.adapter else None,
            "prompt_format": fmt,
            "loss": loss,
        }
        if plan.prompts:
            t0 = time.perf_counter()
            answers = generate_answers(
                net,
                tokenizer,
                [render_for(p, fmt) for p in plan.prompts],
                max_new_tokens=plan.max_new_tokens,
                batch_size=plan.batch_size,
                seed=plan.seed,
            )
            seconds = time.perf_counter() - t0
            scored = []
            for prompt, (text, n_new, reason) in zip(plan.prompts, answers, strict=True):
                s = {**score_answer(text, prompt), "new_tokens": n_new, "finish_reason": reason}
                scored.append(s)
                generations.append(
                    {
                        "entry": entry.name,
                        "id": prompt.id,
                        "set": prompt.set,
                        "prompt": prompt.user,
                        "answer": text,
                        **s,
                    }
                )
            result["generation"] = _by_set(plan.prompts, scored)
            result["generation"]["seconds"] = round(seconds, 3)
            print(f"eval: {entry.name}: {len(answers)} answers in {seconds:.1f} s", file=sys.stderr)
        report["entries"].append(result)
        del net
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    references = [(p, score_answer(p.reference, p)) for p in plan.prompts if p.set == "completion"]
    if references:
        report["reference"] = {"completion": aggregate([s for _, s in references])}
    with atomic_open(plan.output / "generations.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for row in generations:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    report["data"] = {
        "documents": len(plan.documents),
        "prompts": {
            "builtin": sum(p.set == "builtin" for p in plan.prompts),
            "completion": sum(p.set == "completion" for p in plan.prompts),
        },
    }
    report["generation_backend"] = "rwkv1c.infer.engine.Engine (greedy)"
    return report


def prompt_format_of(entry: Entry) -> PromptFormat:
    """How an entry is prompted: its adapter's prompt format; a model without an adapter, in the chat format."""
    from rwkv1c.model.adapter import prompt_format

    return prompt_format(read_adapter_config(entry.adapter)) if entry.adapter else "rwkv-chat"


def render_for(prompt: Prompt, fmt: PromptFormat) -> str:
    """The text a model in prompt format `fmt` is given: a chat turn, or (an adapter trained on plain code)
    the task as a BSL comment, and a completion prompt as the code to continue."""
    from rwkv1c.data.prompts import render_prompt

    if fmt == "rwkv-chat":
        return render_prompt(prompt.user)
    if prompt.prefix:
        return prompt.prefix
    return "".join(f"// {line}\n" for line in prompt.user.splitlines())


def _by_set(prompts: Sequence[Prompt], scored: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out = {"all": aggregate(scored)}
    for name in ("builtin", "completion"):
        part = [s for p, s in zip(prompts, scored, strict=True) if p.set == name]
        if part:
            out[name] = aggregate(part)
    return out


# -- report ------------------------------------------------------------------------------------------------

_ROWS = [
    ("loss", "loss (nats/token)", lambda e: e["loss"]["loss"], "{:.4f}"),
    ("bits_per_byte", "bits per byte", lambda e: e["loss"]["bits_per_byte"], "{:.4f}"),
    ("structural_valid", "structurally valid BSL", lambda e: _gen(e, "structural_valid"), "{:.1%}"),
    ("language_consistency", "keyword-language consistency", lambda e: _gen(e, "language_consistency"), "{:.1%}"),
    ("foreign_free", "free of foreign syntax", lambda e: _gen(e, "foreign_free"), "{:.1%}"),
    ("expect_hit", "expected constructs (built-in tasks)", lambda e: _gen(e, "expect_hit", "builtin"), "{:.1%}"),
    ("completion_valid", "completions valid", lambda e: _gen(e, "structural_valid", "completion"), "{:.1%}"),
    ("truncated", "answers cut at --max-new-tokens", lambda e: _gen(e, "truncated"), "{:.1%}"),
]  # fmt: skip


def _gen(entry: dict[str, Any], key: str, part: str = "all") -> float | None:
    value = entry.get("generation", {}).get(part, {}).get(key)
    return None if value is None else float(value)


def _fmt(value: float | None, pattern: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def markdown_report(report: dict[str, Any]) -> str:
    """The report as a Markdown page (models side by side; a delta column when there are several)."""
    entries = report["entries"]
    names = [e["name"] for e in entries]
    delta = len(entries) >= 2
    head = ["metric", *names] + ([f"Δ {names[-1]} − {names[0]}"] if delta else [])
    lines = [
        "# 1C evaluation",
        "",
        f"Held-out data: `{report['settings']['data']}` — {report['data']['documents']} documents; prompts: "
        f"{report['data']['prompts']['builtin']} built-in tasks, {report['data']['prompts']['completion']} "
        f"complete-the-method. Decoding: greedy, up to {report['settings']['max_new_tokens']} new tokens.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for _, label, get, pattern in _ROWS:
        values = [get(e) for e in entries]
        cells = [_fmt(v, pattern) for v in values]
        if delta:
            first, last = values[0], values[-1]
            diff = None if first is None or last is None else last - first
            cells.append(_fmt(diff, "{:+.4f}" if "f}" in pattern else "{:+.1%}"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ref = report.get("reference", {}).get("completion")
    if ref:
        lines += [
            "",
            f"Reference (the true continuations of the {ref['prompts']} completion prompts, scored the same way): "
            f"structurally valid {ref['structural_valid']:.1%}, keyword-language consistency "
            f"{ref['language_consistency']:.1%}, free of foreign syntax {ref['foreign_free']:.1%}.",
        ]
    lines += ["", "| model | file | adapter | prompted as | tokens scored |", "|---|---|---|---|---|"]
    for e in entries:
        fmt = e.get("prompt_format", "rwkv-chat")
        lines.append(f"| {e['name']} | `{e['model']}` | {e['adapter'] or '—'} | {fmt} | {e['loss']['tokens']} |")
    lines += [
        "",
        "Bits per byte = sum of token NLL (nats) / ln 2 / UTF-8 bytes: lower is better and comparable across "
        "tokenizers. Structural validity: balanced Процедура/Функция, Если, Цикл, Попытка blocks and "
        "preprocessor lines, closed strings. Per-answer details: `generations.jsonl`.",
    ]
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> None:
    """A PNG: bits per byte (left) and generation rates (right) per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = report["entries"]
    names = [e["name"] for e in entries]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 2.4]})
    bpb = [e["loss"]["bits_per_byte"] for e in entries]
    ax1.bar(range(len(names)), bpb, color=[f"C{i}" for i in range(len(names))])
    ax1.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax1.set_title("bits per byte (lower is better)", fontsize=10)
    metrics = [(k, label) for k, label, _, p in _ROWS if p == "{:.1%}" and k != "truncated"]
    width = 0.8 / max(1, len(entries))
    for i, e in enumerate(entries):
        values = [next(get for key, _, get, _ in _ROWS if key == k)(e) or 0.0 for k, _ in metrics]
        xs = [j + i * width for j in range(len(metrics))]
        ax2.bar(xs, [100 * v for v in values], width, label=e["name"], color=f"C{i}")
    ax2.set_xticks(
        [j + width * (len(entries) - 1) / 2 for j in range(len(metrics))],
        [label.replace(" (built-in tasks)", "").replace("structurally ", "") for _, label in metrics],
        rotation=20,
        ha="right",
        fontsize=8,
    )
    ax2.set_ylim(0, 105)
    ax2.set_ylabel("%")
    ax2.set_title("generation (higher is better)", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(report: dict[str, Any], output: Path) -> None:
    """report.json, report.md and report.png in ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "report.json", report)
    with atomic_open(output / "report.md", "w", encoding="utf-8", newline="\n") as f:
        f.write(markdown_report(report))
    chart(report, output / "report.png")
