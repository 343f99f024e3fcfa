"""Plain-text normalisation shared by every part that reads user or source text (prompts, 1C sources)."""

from __future__ import annotations


def normalize_newlines(text: str) -> str:
    """CRLF and lone CR to LF; a leading BOM removed."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")
