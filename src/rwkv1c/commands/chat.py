"""`rwkv1c chat`: an interactive chat in the terminal; the history is the model's recurrent state.

Commands: /reset, /save [FILE], /help, /quit. A line holding only \"\"\" starts or ends a multi-line
message (for pasted code).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from rwkv1c.errors import UserError
from rwkv1c.infer.sampling import DEFAULTS, from_flags
from rwkv1c.model.loader import Device, DType

if TYPE_CHECKING:
    from rwkv1c.infer.chat import ChatSession

HELP = """commands:
  /reset         forget the conversation (back to the system prompt, if any)
  /save [FILE]   write the conversation to FILE (JSON; default chat-YYYYmmdd-HHMMSS.json)
  /help          this text
  /quit          leave (Ctrl-D too)
a line with only \"\"\" starts or ends a multi-line message"""


def repl(session: ChatSession, lines: Iterable[str], out: IO[str], err: IO[str]) -> int:
    """Read user lines, print replies to `out` (streamed) and prompts/notes to `err`. Returns turns done."""
    turns = 0
    buffer: list[str] | None = None
    it = iter(lines)
    while True:
        err.write("... " if buffer is not None else "User: ")
        err.flush()
        try:
            line = next(it).rstrip("\n")
        except StopIteration:
            break
        if line.strip() == '"""':
            if buffer is None:
                buffer = []
                continue
            line, buffer = "\n".join(buffer), None
        elif buffer is not None:
            buffer.append(line)
            continue
        command = line.strip()
        if command in ("/quit", "/exit"):
            break
        if command == "/help":
            err.write(HELP + "\n")
            continue
        if command == "/reset":
            session.reset()
            err.write("(conversation reset)\n")
            continue
        if command.startswith("/save"):
            name = command[len("/save") :].strip() or time.strftime("chat-%Y%m%d-%H%M%S.json")
            try:
                err.write(f"(saved to {session.save(Path(name))})\n")
            except (UserError, OSError) as exc:  # a bad file name must not end the conversation
                err.write(f"(not saved: {exc})\n")
            continue
        if not command:
            continue
        out.write("Assistant:")
        out.flush()

        def show(delta: str) -> None:
            out.write(delta)
            out.flush()

        try:
            session.ask(line, on_text=show)
        except ValueError as exc:
            err.write(f"({exc})\n")
            continue
        out.write("\n\n")
        out.flush()
        turns += 1
    return turns


def chat(
    *,
    model: Path,
    adapter: Path | None = None,
    system: str | None = None,
    max_tokens: int = 1024,
    temperature: float = DEFAULTS.temperature,
    top_p: float = DEFAULTS.top_p,
    top_k: int = DEFAULTS.top_k,
    presence_penalty: float = DEFAULTS.presence_penalty,
    frequency_penalty: float = DEFAULTS.frequency_penalty,
    penalty_decay: float = DEFAULTS.penalty_decay,
    seed: int | None = None,
    device: Device = "auto",
    dtype: DType = "auto",
    quant: Literal["none", "int8", "nf4"] | None = None,
) -> int:
    """Chat with a model in the terminal (RWKV chat format; the history stays in the recurrent state).

    Type a message and press Enter; the reply streams as it is generated. /reset forgets the
    conversation, /save [FILE] writes it as JSON, /quit (or Ctrl-D) leaves. A line with only \"\"\"
    starts and ends a multi-line message, for pasting code.

    Args:
        model: the .pth checkpoint (a base or a merged model).
        adapter: an adapter folder (from `rwkv1c train`) applied on top of --model, unmerged.
        system: text placed before the conversation ("System: ..."), kept across /reset.
        max_tokens: the most tokens in one reply.
        temperature: sampling temperature; 0 is greedy.
        top_p: nucleus sampling: keep the most likely tokens up to this cumulative probability.
        top_k: keep only the k most likely tokens (0 = off).
        presence_penalty: subtracted from the logit of every token already in the reply.
        frequency_penalty: subtracted per (decayed) occurrence in the reply; spaces and digits are exempt.
        penalty_decay: each step multiplies the occurrence counts by this.
        seed: makes the replies reproducible.
        device: where to run: auto (CUDA when available), cpu or cuda.
        dtype: weights' precision: auto (fp16 on CUDA, fp32 on CPU), fp16, bf16 or fp32.
        quant: store the large matrices in int8 or nf4 (less memory; `rwkv1c plan --inference` says what
            fits); default: QUANT of configs/workspace.env (none).
    """
    flags = dict(locals())
    from rwkv1c.infer.chat import ChatSession
    from rwkv1c.infer.engine import describe, load_engine
    from rwkv1c.model.adapter import prompt_format, read_adapter_config

    if max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {max_tokens}")
    if adapter is not None and prompt_format(read_adapter_config(adapter)) != "rwkv-chat":
        print(
            f"rwkv1c chat: note: {adapter} was trained on plain text, not on chat turns; its replies may not "
            "follow the chat format (`rwkv1c generate --prompt CODE` continues code instead)",
            file=sys.stderr,
        )
    params = from_flags(flags)
    from rwkv1c.machine.memory import inference_settings
    from rwkv1c.model.loader import resolve_device

    chosen, head = inference_settings(model, quant, 1, resolve_device(device))
    engine = load_engine(model, adapter, device=device, dtype=dtype, max_batch=1, quant=chosen, quantize_head=head)
    print(describe(engine), file=sys.stderr)
    session = ChatSession(engine, params, system)
    print("type /help for commands, /quit to leave", file=sys.stderr)
    try:
        repl(session, sys.stdin, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    return 0
