"""`rwkv1c doctor`: check this machine for fine-tuning, each finding with a concrete fix (`rwkv1c.machine.doctor`)."""

from __future__ import annotations

import json as jsonlib
import sys
from dataclasses import asdict

from rwkv1c.machine import doctor as checks


def doctor(*, json: bool = False, model: str | None = None, profile: str | None = None, deep: bool = True) -> int:
    """Check this machine for fine-tuning: WSL2, GPU and driver, torch build, kernels, RAM, disk, paths.

    Each check prints PASS / WARN / FAIL (or SKIP when it does not apply) with what it saw and, for
    problems, the fix. The exit code is 1 when any check fails.

    Args:
        json: print {"checks": [{"name", "status", "detail", "hint"}, ...]} instead of a table.
        model: the preset whose RAM / VRAM / disk needs are checked; default: MODEL_PRESET of the workspace.
        profile: the training profile for those needs; default: PROFILE of the workspace.
        deep: run a tiny CUDA op for torch, bitsandbytes, Triton and flash-linear-attention (the Triton
            kernels compile on first use, which can take a minute).
    """
    if not json:
        print("rwkv1c doctor: checking (importing torch and the GPU libraries in a child process) ...", file=sys.stderr)
    facts = checks.gather_facts(model=model, profile=profile, deep=deep)
    found = checks.run_checks(facts)
    if json:
        print(jsonlib.dumps({"checks": [asdict(c) for c in found]}, indent=2, ensure_ascii=False))
    else:
        print(checks.format_checks(found))
    return 1 if any(c.status == "fail" for c in found) else 0
