"""Map a failure to the fix a user most likely needs.

`hint_for(exc)` reads the exception (and the exceptions it was raised from) and returns one short
paragraph, or None when nothing matches. It matches on type names and message text only, so it
never imports torch, bitsandbytes or triton and works on any exception object.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import TextIO

_GIB = re.compile(r"([0-9.]+)\s*(GiB|MiB|KiB)")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then its __cause__ / __context__ chain (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _gib(text: str) -> float | None:
    match = _GIB.search(text)
    if match is None:
        return None
    value, unit = float(match.group(1)), match.group(2)
    return value * {"GiB": 1.0, "MiB": 1 / 1024, "KiB": 1 / 1024**2}[unit]


def _oom_hint(exc: BaseException, text: str) -> str | None:
    low = text.lower()
    gpu = type(exc).__name__ == "OutOfMemoryError" or ("out of memory" in low and ("cuda" in low or "gpu" in low))
    host = isinstance(exc, MemoryError) or "can't allocate memory" in low or "cannot allocate memory" in low
    if not gpu:
        if not host:
            return None
        return (
            "the machine ran out of host RAM. Under WSL2 the Linux VM gets only part of the Windows RAM (half by "
            "default): raise `memory=` and `swap=` under [wsl2] in %UserProfile%\\.wslconfig, run `wsl --shutdown` "
            "in PowerShell, and check with `rwkv1c doctor`. Closing other programs, or a smaller model, also helps."
        )
    asked = re.search(r"Tried to allocate ([0-9.]+\s*[GMK]iB)", text)
    total = re.search(r"total capacity of ([0-9.]+\s*[GMK]iB)", text)
    facts = []
    if asked:
        facts.append(f"it asked for {asked.group(1)} more")
    if total:
        facts.append(f"the GPU holds {total.group(1)}")
    gib = _gib(total.group(1)) if total else None
    plan_cmd = "rwkv1c plan --model PRESET --profile PROFILE --ctx-len N --micro-bsz N"
    if gib:
        plan_cmd += f" --vram {gib:.0f}"
    return (
        "the GPU ran out of memory" + (f" ({'; '.join(facts)})" if facts else "") + ". Lower the peak, cheapest "
        "first: turn on gradient checkpointing, halve --micro-bsz (raise gradient accumulation to keep the "
        "batch), shorten --ctx-len, or switch to a 4-bit profile (QLoRA NF4) or a smaller model. "
        f"`{plan_cmd}` predicts the peak of each choice; close other programs that hold VRAM (nvidia-smi lists them)."
    )


def _kernel_image_hint(exc: BaseException, text: str) -> str | None:
    low = text.lower()
    if not (
        "no kernel image is available" in low
        or "is not compatible with the current pytorch installation" in low
        or "invalid device function" in low
        or "cuda capability sm_" in low
    ):
        return None
    return (
        "this PyTorch build has no GPU code for your card. RTX 50xx (Blackwell, compute capability 12.0) needs a "
        "CUDA 12.8+ build (cu128 for torch 2.7-2.11, cu130 for torch 2.12 and later); GTX 10xx / Volta need the "
        "cu126 build. Re-run `scripts/bootstrap.sh` (it picks the wheel index from the GPU it finds) or set "
        "TORCH_INDEX_URL in configs/workspace.env, then check with `rwkv1c doctor`."
    )


def _cuda_init_hint(exc: BaseException, text: str) -> str | None:
    low = text.lower()
    markers = (
        "found no nvidia driver",
        "cuda driver initialization failed",
        "cuda initialization",
        "cudagetdevicecount",
        "no cuda gpus are available",
        "nvidia driver on your system is too old",
        "cuda driver version is insufficient",
        "torch not compiled with cuda enabled",
        "cuda error: unknown error",
        "libcuda.so",
        "cuda_error_no_device",
        "error 804",
        "forward compatibility was attempted",
    )
    if not any(m in low for m in markers):
        return None
    if "torch not compiled with cuda" in low:
        return (
            "the installed torch is the CPU-only build. Re-run `scripts/bootstrap.sh` on the machine with the GPU "
            "(it installs the CUDA build that matches the card), then `rwkv1c doctor`."
        )
    if "too old" in low or "insufficient" in low or "804" in low or "forward compatibility" in low:
        return (
            "the NVIDIA driver is older than the CUDA build of torch needs (CUDA 13.x builds need driver 580+, "
            "CUDA 12.x builds need 525+). Under WSL2 update the driver on Windows (not inside Linux); on native "
            "Linux update the distribution's driver. Or install a torch build for an older CUDA; `rwkv1c doctor` "
            "shows both versions."
        )
    return (
        "CUDA could not start. Under WSL2: install the NVIDIA driver on Windows only, never a Linux NVIDIA "
        "driver inside WSL (remove nvidia-driver-*/libnvidia-compute-*/cuda-drivers packages); make sure "
        "/usr/lib/wsl/lib/nvidia-smi runs; run `wsl --update` and `wsl --shutdown` in PowerShell. Check "
        "CUDA_VISIBLE_DEVICES is not empty. `rwkv1c doctor` runs these checks one by one."
    )


def _shape_mismatch_hint(exc: BaseException, text: str) -> str | None:
    low = text.lower()
    if not ("size mismatch for" in low or "error(s) in loading state_dict" in low or "shape mismatch" in low):
        return None
    return (
        "the weights do not fit the model they are loaded into. Most often the adapter was trained on another "
        "base checkpoint (another size: 0.4B vs 1.5B, or another release); its adapter_config.json names the base "
        "it needs. Pass that base with --model, or retrain the adapter on this one. `rwkv1c inspect FILE` "
        "shows the shapes of both."
    )


def _bitsandbytes_hint(exc: BaseException, text: str) -> str | None:
    low = text.lower()
    bnb = "bitsandbytes" in low or getattr(exc, "name", None) == "bitsandbytes"
    if not bnb and "libbitsandbytes" not in low and "cadam32bit" not in low:
        return None
    if isinstance(exc, ModuleNotFoundError):
        return "bitsandbytes is not installed in this environment: run `scripts/bootstrap.sh` (or `pip install -e .`)."
    return (
        "bitsandbytes cannot use the GPU (it loaded its CPU library or none). QLoRA profiles need a CUDA GPU and a "
        "bitsandbytes build for it: `pip install --force-reinstall bitsandbytes` inside the .venv after torch is "
        "installed with CUDA; run `python -m bitsandbytes` for its own report. Or use a bf16 LoRA profile."
    )


def _triton_hint(exc: BaseException, text: str) -> str | None:
    low = text.lower()
    name = getattr(exc, "name", None) or ""
    if isinstance(exc, ModuleNotFoundError) and name.split(".")[0] in ("triton", "fla"):
        return (
            f"the optional fast kernels are missing (module {name!r}). Install them with "
            "`pip install -e '.[gpu]'` in the .venv (Linux or WSL2 only; Triton has no native Windows build), "
            "or run with the plain PyTorch WKV kernel (slower)."
        )
    if "failed to find c compiler" in low or ("triton" in low and "compiler" in low):
        return (
            "Triton could not build its launcher because no C compiler is installed: "
            "`sudo apt-get install build-essential` (or set CC to a C compiler)."
        )
    if "bfloat16" in low and ("compute capability" in low or "not supported" in low):
        return (
            "this GPU has no bf16 support (it needs compute capability 8.0, RTX 30xx or newer). Use an fp16 / fp32 "
            "setting or a newer GPU; `rwkv1c doctor` reports the card's capability."
        )
    return None


def _compile_hint(exc: BaseException, text: str) -> str | None:
    low = text.lower()
    names = {"BackendCompilerFailed", "InductorError", "TorchRuntimeError", "Unsupported", "InternalTorchDynamoError"}
    if type(exc).__name__ not in names and "torch._dynamo" not in low and "torch._inductor" not in low:
        return None
    return (
        "torch.compile failed while compiling the model blocks (training on a GPU compiles them by default). "
        "Train without it: add `--override COMPILE=off` (or set COMPILE=off in the profile); the results are "
        "the same, only slower. If the message names a missing C compiler: `sudo apt-get install build-essential`."
    )


_RULES: tuple[Callable[[BaseException, str], str | None], ...] = (
    _kernel_image_hint,
    _oom_hint,
    _cuda_init_hint,
    _shape_mismatch_hint,
    _bitsandbytes_hint,
    _triton_hint,
    _compile_hint,
)


def hint_for(exc: BaseException) -> str | None:
    """A one-paragraph fix for ``exc`` (or an exception it came from), or None when none is known."""
    for link in _chain(exc):
        text = f"{type(link).__name__}: {link}"
        for rule in _RULES:
            hint = rule(link, text)
            if hint is not None:
                return hint
    return None


def print_hint(command: str, exc: BaseException, file: TextIO | None = None) -> bool:
    """For the CLI's last-resort handler: print the traceback, then the fix, and return True; or return False
    (printing nothing) when no hint is known, so the caller re-raises and the traceback is the report."""
    hint = hint_for(exc)
    if hint is None:
        return False
    out = file if file is not None else sys.stderr
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=out)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    print(f"\nrwkv1c {command}: {type(exc).__name__}: {first}\nhint: {hint}", file=out)
    return True
