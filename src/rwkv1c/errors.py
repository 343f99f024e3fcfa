"""The one exception type a user sees: a clear message and exit code 1, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad path, bad setting, bad input).

    The message names what is wrong and how to fix it. Several problems found at once are joined
    into one message so the user sees them all in one go.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\nhint: {self.hint}" if self.hint else text


def raise_all(problems: list[str], header: str, *, hint: str | None = None) -> None:
    """Raise one UserError listing every problem, or return if there are none."""
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise UserError(f"{header}:\n{lines}", hint=hint)
