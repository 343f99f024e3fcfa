"""`rwkv1c chat`: an interactive chat in the RWKV chat format, the history kept as the recurrent state.

Each turn feeds only the new text: "User: <text>\\n\\nAssistant:" (blank lines inside the user text
collapsed, no trailing space), then the reply is generated until token 0 or the turn's end, a blank
line (the chat format collapses blank lines inside a turn, answers included). The state after
" <reply>\\n\\n" is the whole conversation so far; it is never re-read. Commands: /reset, /save [FILE],
/help, /quit. A line holding only \"\"\" starts or ends a multi-line message (for pasted code).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from rwkv1c.engine import Device, DType
from rwkv1c.errors import UserError

if TYPE_CHECKING:
    from rwkv1c.engine import Engine
    from rwkv1c.model import RWKVState
    from rwkv1c.sampling import SamplingParams

HELP = """commands:
  /reset         forget the conversation (back to the system prompt, if any)
  /save [FILE]   write the conversation to FILE (JSON; default chat-YYYYmmdd-HHMMSS.json)
  /help          this text
  /quit          leave (Ctrl-D too)
a line with only \"\"\" starts or ends a multi-line message"""


class ChatSession:
    """A conversation over one engine: the state after every finished turn, and the transcript.

    The state after a turn is the state after the canonical text of that turn,
    "User: {text}\\n\\nAssistant: {reply}\\n\\n", tokenised segment by segment as in training.
    """

    def __init__(self, engine: Engine, params: SamplingParams, system: str | None = None) -> None:
        from rwkv1c.generate import chat_stops

        self.params = chat_stops(params)  # a turn ends at "\\n\\n" or token 0
        self.engine = engine
        self.system = system.strip() if system and system.strip() else None
        self.messages: list[dict[str, str]] = []
        self.initial_state = self._initial()
        self.state: RWKVState | None = self.initial_state

    def _initial(self) -> RWKVState | None:
        if self.system is None:
            return None
        from rwkv1c.prompts import render_system

        text = render_system(self.system)
        state, _ = self.engine.prefill(self.engine.encode(text))
        return state

    def reset(self) -> None:
        self.state = self.initial_state
        self.messages = []

    def ask(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        """One turn: the reply text (as generated, without what ended it); the state moves past the turn."""
        from rwkv1c.prompts import TURN_SEPARATOR, clean_user_text, normalize_newlines, render_prompt

        user = clean_user_text(text)
        if not user:
            raise ValueError("the message is empty")
        prompt_ids = self.engine.encode(render_prompt(user))
        after_prompt, logits = self.engine.prefill(prompt_ids, self.state)
        done = self.engine.generate_from(after_prompt, [], self.params, logits=logits, on_text=on_text)
        assert done.state is not None
        answer = normalize_newlines(done.text)
        canon = self.engine.encode(f" {answer}{TURN_SEPARATOR}")
        fed = done.state_tokens
        if done.token_ids[:fed] == canon[:fed]:
            # the state has read a prefix of the canonical turn end: read the rest of it
            self.state = self.engine.prefill(canon[fed:], done.state)[0] if canon[fed:] else done.state
        else:  # it read past it (the stop string ended inside a token): re-read the reply
            self.state, _ = self.engine.prefill(canon, after_prompt)
        self.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return done.text

    def save(self, path: Path) -> Path:
        from rwkv1c.fsutil import write_json

        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        write_json(path, {"messages": messages})
        return path


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
    temperature: float = 1.0,
    top_p: float = 0.3,
    top_k: int = 0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    penalty_decay: float = 0.996,
    seed: int | None = None,
    device: Device = "auto",
    dtype: DType = "auto",
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
    """
    from rwkv1c.generate import make_params, setup

    params = make_params(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        penalty_decay=penalty_decay,
        stop=None,
        blank_line_stop=True,  # the chat format's turn end
        seed=seed,
    )
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {max_tokens}")
    engine = setup(model, adapter, device=device, dtype=dtype, batch_size=1)
    session = ChatSession(engine, params, system)
    print("type /help for commands, /quit to leave", file=sys.stderr)
    try:
        repl(session, sys.stdin, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    return 0
