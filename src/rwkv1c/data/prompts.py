"""The RWKV chat format, in one place for training data, generation, chat and evaluation.

    System: {system}\\n\\nUser: {question}\\n\\nAssistant: {answer}\\n\\nUser: {question 2}\\n\\nAssistant: {answer 2}

- A prompt for generation ends at "Assistant:" with no trailing space; the answer starts with a space.
  Training data is tokenised segment by segment (the prompt alone, then " answer"), so the prompt
  tokens at training time are exactly those of `render_prompt` at inference time.
- "\\n\\n" separates turns, so blank lines inside every turn are collapsed to one newline (answers
  keep their indentation). A reply therefore ends at its first "\\n\\n" — the stop every RWKV runtime
  uses for chat — or at the end-of-document token.
- The "\\n\\n" after an answer is trained with the answer: it is how the model learns that a turn is
  over. Everything the user or system wrote, and the "Assistant:" prefix, is not trained.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from rwkv1c.text import normalize_newlines as _lf_only

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")
PREFIX: dict[str, str] = {"system": "System:", "user": "User:", "assistant": "Assistant:"}
TURN_SEPARATOR = "\n\n"  # ends every turn: generation in this format stops there (and at token 0)

_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


def normalize_newlines(text: str) -> str:
    """`rwkv1c.text.normalize_newlines` (LF only, no BOM), surrounding whitespace stripped."""
    return _lf_only(text).strip()


def clean_user_text(text: str) -> str:
    """User / system text: newlines normalised, stripped, blank lines collapsed to one newline."""
    return _BLANK_LINES.sub("\n", normalize_newlines(text))


def clean_answer_text(text: str) -> str:
    """Assistant text: newlines normalised, blank lines collapsed; a leading tab (code indent) is kept."""
    text = _lf_only(text).strip("\n").lstrip(" ").rstrip()
    return _BLANK_LINES.sub("\n", text)


def render_system(text: str) -> str:
    """The system turn "System: {text}\\n\\n" that may open a conversation."""
    return f"{PREFIX['system']} {clean_user_text(text)}{TURN_SEPARATOR}"


def render_prompt(user_text: str, system: str | None = None) -> str:
    """The generation prompt "User: {text}\\n\\nAssistant:" (with "System: ..." first when given).

    A blank or None ``system`` means no system turn.
    """
    if not isinstance(user_text, str):
        raise TypeError(f"user text must be a string, got {type(user_text).__name__}")
    if system is not None and not isinstance(system, str):
        raise TypeError(f"system text must be a string or None, got {type(system).__name__}")
    text = clean_user_text(user_text)
    if not text:
        raise ValueError("user text is empty")
    head = render_system(system) if system and system.strip() else ""
    return f"{head}{PREFIX['user']} {text}{TURN_SEPARATOR}{PREFIX['assistant']}"


def _check_messages(messages: Any) -> list[str]:
    """Every problem of a message list, as readable phrases (empty when it is valid)."""
    if not isinstance(messages, list):
        return [f"messages must be a list, got {type(messages).__name__}"]
    if not messages:
        return ["messages is an empty list"]
    problems: list[str] = []
    roles: list[str | None] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            problems.append(f"messages[{i}] must be an object with 'role' and 'content', got {type(msg).__name__}")
            roles.append(None)
            continue
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            problems.append(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            problems.append(f"messages[{i}].content must be a string, got {type(content).__name__}")
        elif not content.strip():
            problems.append(f"messages[{i}].content is empty")
        roles.append(role if role in ROLES else None)
    if problems:
        return problems
    # Order: an optional system turn, then user / assistant alternating, ending with the assistant.
    start = 1 if roles[0] == "system" else 0
    for i in range(start, len(roles)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if roles[i] != expected:
            where = "only first" if roles[i] == "system" else f"{expected} expected"
            problems.append(f"messages[{i}] has role {roles[i]!r} ({where}; turns go user, assistant, user, ...)")
    if not problems and roles[-1] != "assistant":
        problems.append("the last message must be from the assistant (it is what the model learns to write)")
    return problems


def render_messages(messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """Render a conversation to text segments with a trainable flag.

    ``messages`` is a list of {"role": "system"|"user"|"assistant", "content": str}: an optional system
    turn, then user and assistant turns alternating, ending with an assistant turn. Adjacent segments
    never share a flag; their concatenation is the whole conversation. Raises ValueError listing every
    problem of an invalid list.
    """
    problems = _check_messages(messages)
    if problems:
        raise ValueError("; ".join(problems))
    segments: list[tuple[str, bool]] = []

    def add(text: str, trainable: bool) -> None:
        if segments and segments[-1][1] == trainable:
            segments[-1] = (segments[-1][0] + text, trainable)
        else:
            segments.append((text, trainable))

    last = len(messages) - 1
    for i, msg in enumerate(messages):
        role, content = msg["role"], msg["content"]
        if role == "system":
            add(render_system(content), False)
        elif role == "user":
            # The next turn is always the assistant's, so its prefix closes the prompt segment.
            add(f"{PREFIX['user']} {clean_user_text(content)}{TURN_SEPARATOR}{PREFIX['assistant']}", False)
        else:
            add(" " + clean_answer_text(content) + (TURN_SEPARATOR if i < last else ""), True)
    return segments


def render_pair(prompt: str, response: str, system: str | None = None) -> list[tuple[str, bool]]:
    """Segments of a single-turn example: the prompt (not trained) and " " + response (trained).

    The first segment equals ``render_prompt(prompt, system)``. Raises ValueError listing every problem.
    """
    problems = []
    for name, value in (("prompt", prompt), ("response", response), ("system", system)):
        if name == "system" and value is None:
            continue
        if not isinstance(value, str):
            problems.append(f"{name} must be a string, got {type(value).__name__}")
        elif name != "system" and not value.strip():
            problems.append(f"{name} is empty")
    if problems:
        raise ValueError("; ".join(problems))
    messages: list[dict[str, Any]] = []
    if system and system.strip():
        messages.append({"role": "system", "content": system})
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return render_messages(messages)
