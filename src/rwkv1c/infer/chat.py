"""A conversation in the RWKV chat format, its history kept as the recurrent state (`rwkv1c chat` drives one).

Each turn feeds only the new text: "User: <text>\\n\\nAssistant:" (blank lines inside the user text
collapsed, no trailing space), then the reply is generated until token 0 or the turn's end, a blank
line (the chat format collapses blank lines inside a turn, answers included). The state after
" <reply>\\n\\n" is the whole conversation so far; it is never re-read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rwkv1c.infer.engine import Engine
    from rwkv1c.infer.sampling import SamplingParams
    from rwkv1c.model.rwkv7 import RWKVState


class ChatSession:
    """A conversation over one engine: the state after every finished turn, and the transcript.

    The state after a turn is the state after the canonical text of that turn,
    "User: {text}\\n\\nAssistant: {reply}\\n\\n", tokenised segment by segment as in training.
    """

    def __init__(self, engine: Engine, params: SamplingParams, system: str | None = None) -> None:
        self.params = params.for_chat()  # a turn ends at "\\n\\n" or token 0
        self.engine = engine
        self.system = system.strip() if system and system.strip() else None
        self.messages: list[dict[str, str]] = []
        self.initial_state = self._initial()
        self.state: RWKVState | None = self.initial_state

    def _initial(self) -> RWKVState | None:
        if self.system is None:
            return None
        from rwkv1c.data.prompts import render_system

        text = render_system(self.system)
        state, _ = self.engine.prefill(self.engine.encode(text))
        return state

    def reset(self) -> None:
        self.state = self.initial_state
        self.messages = []

    def ask(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        """One turn: the reply text (as generated, without what ended it); the state moves past the turn."""
        from rwkv1c.data.prompts import TURN_SEPARATOR, clean_user_text, normalize_newlines, render_prompt

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
