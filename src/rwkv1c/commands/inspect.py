"""`rwkv1c inspect`: what a checkpoint is, read from its tensor shapes."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path


def inspect_checkpoint(model: Path, *, json: bool = False) -> None:
    """Show what an RWKV-7 checkpoint is: layers, width, heads, low-rank sizes, vocab, parameters, dtype.

    Args:
        model: the .pth checkpoint.
        json: print JSON instead of a table.
    """
    from rwkv1c.model.inspect import describe, format_description

    info = describe(model)
    print(jsonlib.dumps(info, indent=2) if json else format_description(info))
