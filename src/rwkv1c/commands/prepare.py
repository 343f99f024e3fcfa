"""`rwkv1c prepare`: turn a JSONL file into a binidx token dataset for training."""

from __future__ import annotations

import sys
from pathlib import Path


def prepare(input: Path, *, output: str, skip_bad: bool = False, workers: int = 2) -> int | None:
    """Tokenise a JSONL file into a binidx dataset (PREFIX_text_document.bin/.idx, plus .mask).

    Each line is {"text": ...} (trained in full), {"prompt": ..., "response": ...} or {"messages": [...]}
    (rendered in the RWKV chat format; only the answers are trained). Every document ends with token 0.
    Bad lines stop the run and nothing is written, unless --skip-bad is given.

    Args:
        input: JSONL file, one JSON object per line (UTF-8).
        output: Dataset prefix, e.g. data/bsl; "_text_document" is appended unless already there.
        skip_bad: Leave out bad lines (counted in the summary) instead of stopping.
        workers: Processes that tokenise in parallel (1 = in this process).
    """
    from rwkv1c.data.prepare import bad_lines_list, format_summary, run, setup

    settings = setup(input, output, skip_bad=skip_bad, workers=workers)
    stats = run(settings)
    if stats.bad_lines:
        print(f"warning: skipped {stats.bad_lines} bad line(s):\n{bad_lines_list(stats)}", file=sys.stderr)
    print(format_summary(stats))
    return 0
