"""`rwkv1c generate`: continue one prompt (streamed to stdout) or a JSONL file of prompts (JSONL out).

Only the generated text goes to stdout; the model summary and timings go to stderr, so
`rwkv1c generate ... > answer.txt` or a pipe gets exactly the continuation.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from rwkv1c.errors import UserError
from rwkv1c.infer.sampling import DEFAULTS, from_flags
from rwkv1c.model.loader import Device, DType

if TYPE_CHECKING:
    from rwkv1c.config import Quant
    from rwkv1c.infer.engine import Engine
    from rwkv1c.infer.sampling import SamplingParams

# per-line keys of a prompts file that override the command-line settings
OVERRIDES = {
    "max_tokens": int,
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "presence_penalty": float,
    "frequency_penalty": float,
    "penalty_decay": float,
    "seed": int,
    "stop": list,
}


def unescape(text: str) -> str:
    r"""Turn the two-character sequences \n, \t and \\ typed on a command line into the characters."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def read_prompts(path: Path, base: SamplingParams) -> list[tuple[dict[str, Any], SamplingParams]]:
    """Each line of a JSONL file: {"prompt": str, ...optional overrides}; all problems reported together."""
    if not path.is_file():
        raise UserError(f"prompts file not found: {path}")
    items: list[tuple[dict[str, Any], SamplingParams]] = []
    problems: list[str] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a file saved by Windows Notepad
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"line {lineno}: invalid UTF-8 (byte {exc.start + 1} of the line)")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"line {lineno}: not JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                problems.append(f'line {lineno}: expected an object with a "prompt" string')
                continue
            if (bad := text_problem(obj["prompt"])) is not None:
                problems.append(f'line {lineno}: "prompt" {bad}')
                continue
            changes: dict[str, Any] = {}
            for key, tp in OVERRIDES.items():
                if key not in obj:
                    continue
                value = obj[key]
                if key == "stop":
                    value = [value] if isinstance(value, str) else value
                    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                        problems.append(f'line {lineno}: "stop" must be a string or a list of strings')
                        continue
                    changes[key] = tuple(value)
                elif (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or (tp is int and value != int(value))
                ):
                    problems.append(f'line {lineno}: "{key}" must be a number, got {value!r}')
                else:
                    changes[key] = tp(value)
            if "seed" not in changes and base.seed is not None:
                changes["seed"] = base.seed + len(items)  # distinct, reproducible draws per line
            params = dataclasses.replace(base, **changes)
            problems += [f"line {lineno}: {p}" for p in params.problems()]
            items.append((obj, params))
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise UserError(f"bad prompts file {path}:\n" + "\n".join(f"  - {p}" for p in shown))
    if not items:
        raise UserError(f"prompts file {path} has no prompts")
    return items


def text_problem(text: str) -> str | None:
    """What makes `text` unusable as a prompt (a lone surrogate: undecodable bytes on the command line, or a
    JSON escape such as \\ud800), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid text: character {exc.start + 1} is a lone surrogate ({text[exc.start]!r})"
    return None


def read_stdin() -> str:
    """The prompt from standard input, which must be UTF-8 (checked before any model is loaded)."""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"the prompt on standard input is not UTF-8 (byte {exc.start + 1} of {len(data)})",
            hint="convert it first, e.g. `iconv -f cp1251 -t utf-8 FILE | rwkv1c generate --prompt - ...`",
        ) from None


def format_prompt(text: str, chat: bool) -> str:
    if not chat:
        return text
    from rwkv1c.data.prompts import render_prompt

    try:
        return render_prompt(text)
    except ValueError as exc:
        raise UserError(f"cannot use this prompt in the chat format: {exc}") from None


LONG_PROMPT = 2048  # tokens: a prompt this long is announced before it is read (it can take seconds)


def stream_one(engine: Engine, text: str, params: SamplingParams, out: IO[str]) -> Any:
    """Generate for one prompt, writing the text to `out` as it appears (flushed per piece). The reading of
    the prompt and the generation are timed apart, so neither rate hides in the other."""
    import torch

    ids = engine.encode(text)
    if len(ids) >= LONG_PROMPT:
        print(f"reading the prompt ({len(ids):,} tokens) ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    state, logits = engine.prefill(ids)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    read_s = time.perf_counter() - t0
    print(f"prompt: {len(ids):,} tokens in {read_s:.1f} s ({len(ids) / max(read_s, 1e-9):,.0f} tokens/s)",
          file=sys.stderr)  # fmt: skip

    def write(delta: str) -> None:
        out.write(delta)
        out.flush()

    t1 = time.perf_counter()
    completion = engine.generate_from(state, [], params, logits=logits, on_text=write)
    gen_s, made = time.perf_counter() - t1, len(completion.token_ids)
    if getattr(out, "isatty", lambda: False)():
        out.write("\n")
    print(f"generated {made} tokens in {gen_s:.1f} s ({made / max(gen_s, 1e-9):.1f} tokens/s)", file=sys.stderr)
    return completion


def run_jsonl(engine: Engine, items: list[tuple[dict[str, Any], SamplingParams]], chat: bool, out: IO[str]) -> int:
    """Generate for every prompt and write one JSON line per prompt, in input order. Returns tokens made."""
    texts = [format_prompt(obj["prompt"], chat) for obj, _ in items]
    completions = engine.generate(texts, [p for _, p in items])
    made = 0
    for (obj, _), c in zip(items, completions):
        row = dict(obj)
        row.update(
            completion=c.text,
            finish_reason=c.finish_reason,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=len(c.token_ids),
        )
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        made += len(c.token_ids)
    out.flush()
    return made


def generate(
    *,
    model: Path,
    adapter: Path | None = None,
    prompt: str | None = None,
    prompts: Path | None = None,
    chat: bool | None = None,
    max_tokens: int = DEFAULTS.max_tokens,
    temperature: float = DEFAULTS.temperature,
    top_p: float = DEFAULTS.top_p,
    top_k: int = DEFAULTS.top_k,
    presence_penalty: float = DEFAULTS.presence_penalty,
    frequency_penalty: float = DEFAULTS.frequency_penalty,
    penalty_decay: float = DEFAULTS.penalty_decay,
    stop: list[str] | None = None,
    blank_line_stop: bool = True,
    seed: int | None = None,
    batch_size: int = 16,
    output: Path | None = None,
    device: Device = "auto",
    dtype: DType = "auto",
    quant: Literal["none", "int8", "nf4"] | None = None,
) -> int:
    """Generate text: the continuation of --prompt on stdout, or JSONL for a --prompts file.

    Sampling follows the `rwkv` package: top-p / top-k on the untempered probabilities, then the
    temperature; --temperature 0 is greedy. Generation stops at token 0, at the first blank line
    ("\\n\\n", how RWKV ends a chat turn; --no-blank-line-stop continues raw code past blank lines), at
    any --stop string, or after --max-tokens.

    Args:
        model: the .pth checkpoint (a base or a merged model).
        adapter: an adapter folder (from `rwkv1c train`) applied on top of --model, unmerged.
        prompt: the text to continue ("-" reads it from stdin); the continuation streams to stdout.
        prompts: a JSONL file, one {"prompt": ...} object a line (optionally with max_tokens, temperature,
            top_p, top_k, presence_penalty, frequency_penalty, penalty_decay, seed, stop); each line comes
            back on stdout with "completion", "finish_reason", "prompt_tokens" and "completion_tokens" added.
        chat: wrap each prompt in the chat format ("User: ...\\n\\nAssistant:"); default: the format the
            --adapter was trained in (its adapter_config.json), plain text without an adapter.
        max_tokens: the most tokens generated per prompt.
        temperature: sampling temperature; 0 is greedy.
        top_p: nucleus sampling: keep the most likely tokens up to this cumulative probability.
        top_k: keep only the k most likely tokens (0 = off).
        presence_penalty: subtracted from the logit of every token generated so far.
        frequency_penalty: subtracted per (decayed) occurrence; spaces, tabs and digits are not counted.
        penalty_decay: each step multiplies the occurrence counts by this.
        stop: strings that end the generation (repeatable; \\n and \\t are understood).
        blank_line_stop: stop at the first blank line (how RWKV chat models end a turn); turn it off
            with --no-blank-line-stop to continue raw code, which has blank lines of its own.
        seed: makes sampling reproducible (line i of a prompts file uses seed + i unless it sets its own).
        batch_size: the most prompts decoded together.
        output: write the JSONL (or the text) to this file instead of stdout (atomically).
        device: where to run: auto (CUDA when available), cpu or cuda.
        dtype: weights' precision: auto (fp16 on CUDA, fp32 on CPU), fp16, bf16 or fp32.
        quant: store the large matrices in int8 or nf4 (less memory; `rwkv1c plan --inference` says what
            fits); default: QUANT of configs/workspace.env (none).
    """
    from rwkv1c.model.adapter import prompt_format, read_adapter_config

    problems = []
    if chat is None:
        chat = adapter is not None and prompt_format(read_adapter_config(adapter)) == "rwkv-chat"
    if (prompt is None) == (prompts is None):
        problems.append("give exactly one of --prompt TEXT or --prompts FILE.jsonl")
    if batch_size < 1:
        problems.append(f"--batch-size must be >= 1, got {batch_size}")
    if chat and not blank_line_stop:
        problems.append("--chat ends every reply at the turn's end, a blank line: drop --no-blank-line-stop")
    if problems:
        raise UserError("; ".join(problems))
    flags = {**locals(), "stop": tuple(unescape(s) for s in stop or ()), "stop_at_blank_line": blank_line_stop}
    params = from_flags(flags)
    if chat:
        params = params.for_chat()
    items = read_prompts(prompts, params) if prompts is not None else None
    if prompt == "-":
        prompt = read_stdin()
    if prompt is not None and (bad := text_problem(prompt)) is not None:
        raise UserError(f"--prompt {bad}", hint="pass the prompt as UTF-8 text")
    engine = setup(model, adapter, device=device, dtype=dtype, max_batch=batch_size, quant=quant)
    t0 = time.perf_counter()
    if output is not None:
        from rwkv1c.fsutil import atomic_open

        with atomic_open(output, "w", encoding="utf-8") as f:
            made = main(engine, prompt, items, params, chat, f)
    else:
        made = main(engine, prompt, items, params, chat, sys.stdout)
    if items is not None:  # (one prompt reports its reading and its generation apart, as it goes)
        dt = time.perf_counter() - t0
        print(f"generated {made} tokens in {dt:.1f} s ({made / max(dt, 1e-9):.1f} tokens/s)", file=sys.stderr)
    return 0


def setup(
    model: Path, adapter: Path | None, *, device: Device, dtype: DType, max_batch: int, quant: Quant | None
) -> Engine:
    """Check that the model fits, load it (with the adapter) and make the engine; one summary line to stderr."""
    from rwkv1c.infer.engine import describe, load_engine
    from rwkv1c.machine.memory import inference_settings
    from rwkv1c.model.loader import resolve_device

    quant, head = inference_settings(model, quant, max_batch, resolve_device(device))
    engine = load_engine(model, adapter, device=device, dtype=dtype, max_batch=max_batch, quant=quant,
                         quantize_head=head)  # fmt: skip
    print(describe(engine), file=sys.stderr)
    return engine


def main(
    engine: Engine,
    prompt: str | None,
    items: list[tuple[dict[str, Any], SamplingParams]] | None,
    params: SamplingParams,
    chat: bool,
    out: IO[str],
) -> int:
    """Run one prompt (streamed) or a prompts file (JSONL); returns the number of tokens generated."""
    if items is not None:
        return run_jsonl(engine, items, chat, out)
    assert prompt is not None
    completion = stream_one(engine, format_prompt(prompt, chat), params, out)
    return len(completion.token_ids)
