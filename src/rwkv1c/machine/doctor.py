"""Checks of this machine for fine-tuning, each finding with a concrete fix (`rwkv1c doctor` runs them).

Most failed fine-tuning attempts die before the first step: WSL1 instead of WSL2, no GPU inside WSL,
a Linux NVIDIA driver installed inside WSL, a torch build without code for the card, WSL's memory cap,
data on a Windows drive. The checks here look for each of these.

Design: `gather_facts()` reads the system once into a `Facts` object (/proc files, environment,
nvidia-smi and dpkg output, memory, disks, mounts, paths, and what torch / bitsandbytes / Triton /
flash-linear-attention report when imported and run on a tiny input in a child process). Each check
is a small function `Facts -> Check`, so tests feed it made-up facts.
"""

from __future__ import annotations

import glob
import json as jsonlib
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rwkv1c.errors import UserError
from rwkv1c.machine.nvidia import (
    TESTED_TORCH,
    TORCH_RELEASES,
    WSL_LIB,
    Gpu,
    choose_torch,
    min_driver_for_cuda,
    parse_nvidia_smi,
    query_gpus,
)

Status = Literal["pass", "warn", "fail", "skip"]
WINDOWS_FS = ("9p", "drvfs", "virtiofs")
# Packages that put a Linux kernel driver, its libcuda or its nvidia-smi into WSL, where they shadow the Windows
# driver's. `cuda` and `cuda-12-6`-style meta packages pull the driver in through cuda-drivers / cuda-runtime-*;
# the toolkit alone (cuda-toolkit-12-6) is harmless.
LINUX_DRIVER_PACKAGES = re.compile(
    r"^(nvidia-driver-\S+|nvidia-dkms-\S+|nvidia-kernel-\S+|libnvidia-compute-\S+|nvidia-utils-\S+|"
    r"cuda-drivers(-\S+)?|nvidia-open(-\S+)?|xserver-xorg-video-nvidia-\S+|nvidia-driver|nvidia-open-kernel-dkms|"
    r"cuda|cuda-\d+-\d+|cuda-runtime-\d+-\d+|libcuda1|nvidia-smi)$"
)


@dataclass(frozen=True)
class Check:
    """One finding: status, what was seen, and how to fix it (empty when nothing to do)."""

    name: str
    status: Status
    detail: str
    hint: str = ""


@dataclass(frozen=True)
class Needs:
    """What the chosen preset and profile need (from `rwkv1c.plan`)."""

    preset: str = "rwkv7-1.5b"
    profile: str = "lora-bf16"
    quant: str = "bf16"
    checkpoint_bytes: float = 3.06e9
    host_ram_gib: float = 5.0
    vram_gib: float = 5.5
    checkpoint_present: bool = False


@dataclass
class Facts:
    """Everything the checks look at, read once from the system (or made up by a test)."""

    system: str = "Linux"
    proc_version: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    wsl_lib_dir: bool = False
    nvidia_smi: str | None = None
    nvidia_smi_on_path: bool = False
    nvidia_smi_csv: str | None = None
    nvidia_smi_error: str | None = None
    nvidia_smi_failures: tuple[tuple[str, str], ...] = ()  # every nvidia-smi that failed, in the order tried
    wsl_signs: tuple[str, ...] = ()  # WSL_DISTRO_NAME, /run/WSL, the WSLInterop binfmt entry: what says "WSL"
    dpkg: str | None = None
    libcuda_copies: tuple[str, ...] = ()
    meminfo_kib: Mapping[str, int] = field(default_factory=dict)
    wslconfig: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[tuple[str, str], ...] = ()
    paths: Mapping[str, str] = field(default_factory=dict)
    disk_free: Mapping[str, int] = field(default_factory=dict)
    python: tuple[int, int, int] = (3, 11, 0)
    runtime: Mapping[str, Any] | None = None
    needs: Needs = field(default_factory=Needs)
    settings_error: str | None = None

    # -- derived views ------------------------------------------------------------------------

    @property
    def kind(self) -> Literal["wsl2", "wsl1", "linux", "windows", "macos", "other"]:
        if self.system == "Windows":
            return "windows"
        if self.system == "Darwin":
            return "macos"
        if self.system != "Linux":
            return "other"
        text = self.proc_version.lower()
        # WSL1 has no kernel of its own: it reports a fixed 4.4.0-<Windows build>-Microsoft.
        if re.search(r"linux version 4\.4\.0-\d+-microsoft", text):
            return "wsl1"
        # WSL2 kernels say "...-microsoft-standard-WSL2"; a custom WSL2 kernel may not, but the WSL environment
        # variable, /run/WSL and the Windows-interop binfmt entry are there all the same.
        if "microsoft" in text or "wsl" in text or self.wsl_signs:
            return "wsl2"
        return "linux"

    @property
    def is_wsl(self) -> bool:
        return self.kind in ("wsl1", "wsl2")

    @property
    def gpus(self) -> list[Gpu]:
        return parse_nvidia_smi(self.nvidia_smi_csv) if self.nvidia_smi_csv else []

    def installed_packages(self) -> list[str]:
        if not self.dpkg:
            return []
        names = []
        for line in self.dpkg.splitlines():
            parts = line.split("\t")
            # db:Status-Abbrev: wanted action, then the state; "i" second means installed ("ii", "hi" held, ...)
            if len(parts) >= 2 and parts[1][1:2] == "i":
                names.append(parts[0].split(":")[0])
        return names

    def rt(self, name: str) -> Mapping[str, Any]:
        return (self.runtime or {}).get(name) or {}


# ---------------------------------------------------------------------------------------------- parsing


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as {key: kB}."""
    out = {}
    for line in text.splitlines():
        match = re.match(r"(\w+):\s+(\d+)", line)
        if match:
            out[match.group(1)] = int(match.group(2))
    return out


def parse_wslconfig(text: str) -> dict[str, str]:
    """The [wsl2] keys of a .wslconfig, lower-cased."""
    out: dict[str, str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
        elif "=" in line and section == "wsl2":
            key, value = line.split("=", 1)
            out[key.strip().lower()] = value.strip()
    return out


def mount_of(path: str, mounts: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    """The (mount point, fs type) holding ``path``: the longest mount point that is a prefix of it."""
    best = None
    for point, fstype in mounts:
        inside = path == point or path.startswith(point.rstrip("/") + "/") or point == "/"
        if inside and (best is None or len(point) > len(best[0])):
            best = (point, fstype)
    return best


def on_windows_drive(path: str, facts: Facts) -> bool:
    """True when ``path`` lives on a Windows drive seen through WSL (/mnt/c, a 9p/drvfs mount)."""
    if not facts.is_wsl:
        return False
    if re.match(r"^/mnt/[a-zA-Z](/|$)", path):
        return True
    mount = mount_of(path, facts.mounts)
    return mount is not None and mount[1] in WINDOWS_FS and mount[0] != "/"


def _gib(kib: int) -> float:
    return kib / 2**20


def arch_supported(cap: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch build's arch list runs on a GPU of compute capability ``cap``.

    A cubin sm_XY runs on the same major X with minor >= Y ("a"/"f" variants only on their exact chip);
    PTX compute_XY is JIT-compiled for any GPU of capability >= XY.
    """
    dev = cap[0] * 10 + cap[1]
    for arch in arch_list:
        match = re.match(r"(sm|compute)_(\d+)(\d)([a-z]?)$", arch)
        if not match:
            continue
        kind, major, minor, suffix = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
        if kind == "compute" and major * 10 + minor <= dev:
            return True
        if kind == "sm" and major == cap[0] and (minor == cap[1] if suffix else minor <= cap[1]):
            return True
    return False


def _first_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------- checks

WSLCONFIG_HINT = (
    "in Windows, edit %UserProfile%\\.wslconfig:\n[wsl2]\nmemory={mem}GB\nswap={swap}GB\n"
    "then run `wsl --shutdown` in PowerShell and reopen the terminal"
)


def check_platform(f: Facts) -> Check:
    kind = f.kind
    match = re.search(r"Linux version (\S+)", f.proc_version)
    kernel = f"kernel {match.group(1)}" if match else "kernel ?"
    if kind == "wsl2":
        custom = (
            ""
            if "microsoft" in f.proc_version.lower()
            else "; a custom kernel, recognised by " + ", ".join(f.wsl_signs)
        )
        return Check("platform", "pass", f"WSL2 ({kernel}{custom})")
    if kind == "linux":
        return Check("platform", "pass", f"native Linux ({kernel})")
    if kind == "wsl1":
        return Check(
            "platform",
            "fail",
            "WSL1: it has no GPU access and no real Linux kernel",
            "in PowerShell: `wsl -l -v` to see the distro, then `wsl --set-version <distro> 2` "
            "(and `wsl --set-default-version 2` for new ones)",
        )
    if kind == "windows":
        return Check(
            "platform",
            "fail",
            "native Windows Python: the GPU kernels (Triton, flash-linear-attention) need Linux",
            "install WSL2 (`wsl --install -d Ubuntu` in PowerShell) and run rwkv1c inside it; see docs/wsl2.md",
        )
    return Check("platform", "fail", f"{f.system}: no CUDA here", "use Linux or Windows 11 + WSL2 with an NVIDIA GPU")


def check_nvidia_smi(f: Facts) -> Check:
    name = "nvidia-smi"
    if f.kind in ("wsl1", "windows", "macos", "other"):
        return Check(name, "skip", "not applicable on this platform")
    if f.nvidia_smi is None:
        if f.kind == "wsl2":
            if not f.wsl_lib_dir:
                return Check(
                    name,
                    "fail",
                    f"{WSL_LIB} is missing: WSL exposes no GPU",
                    "install (or update) the NVIDIA driver on Windows, not inside Linux; then `wsl --update` and "
                    "`wsl --shutdown` in PowerShell. GPU support needs Windows 11 (or Windows 10 21H2+)",
                )
            return Check(
                name,
                "fail",
                f"{WSL_LIB} exists but holds no nvidia-smi",
                "update the Windows NVIDIA driver (it ships the WSL libraries), then `wsl --shutdown`",
            )
        return Check(
            name,
            "warn",
            "no NVIDIA GPU driver found: training and generation will run on the CPU only (fine for tests, "
            "far too slow for real fine-tuning)",
            "on a machine with an NVIDIA GPU install the distribution's NVIDIA driver so that `nvidia-smi` works",
        )
    if f.nvidia_smi_error or not f.gpus:
        err = _first_line(f.nvidia_smi_error or "no GPU listed")
        hint = (
            "update the Windows NVIDIA driver and run `wsl --shutdown`" if f.is_wsl else "reinstall the NVIDIA driver"
        )
        if f.is_wsl and _linux_driver_packages(f):
            hint = "remove the Linux NVIDIA driver packages inside WSL (see the check below); " + hint
        others = [f"; {exe} failed too: {_first_line(why, 120)}" for exe, why in f.nvidia_smi_failures[1:]]
        return Check(name, "fail", f"{f.nvidia_smi} failed: {err}" + "".join(others), hint)
    detail = f"{f.nvidia_smi} works"
    if f.nvidia_smi_failures:
        broken = "; ".join(f"{exe} fails: {_first_line(why, 120)}" for exe, why in f.nvidia_smi_failures)
        if f.is_wsl:
            # the most common WSL mistake: a Linux driver package put its own nvidia-smi (and libcuda) first
            return Check(
                name,
                "fail",
                f"{broken}; it comes before the working {f.nvidia_smi}, so `nvidia-smi` and tools that call it "
                "see no GPU",
                "a Linux NVIDIA driver package installed inside WSL put it there: remove the packages the 'no Linux "
                "driver in WSL' check names (`sudo apt-get remove --purge ...`), then `wsl --shutdown` in PowerShell",
            )
        return Check(
            name,
            "warn",
            f"{broken}; {f.nvidia_smi} works",
            "remove the broken copy or reinstall the NVIDIA driver so that the first nvidia-smi on PATH works",
        )
    if f.is_wsl and not f.nvidia_smi_on_path:
        return Check(
            name,
            "warn",
            detail + f", but {WSL_LIB} is not on PATH",
            f"add `export PATH=$PATH:{WSL_LIB}` to ~/.bashrc",
        )
    return Check(name, "pass", detail)


def _torch_fix(f: Facts, version: str) -> str:
    """How to get a torch build that runs on this GPU and driver (the rule scripts/bootstrap.sh follows)."""
    base = version.split("+")[0]
    known = ".".join(base.split(".")[:2]) in TORCH_RELEASES  # else what bootstrap installs by default
    try:
        choice = choose_torch(base if known else TESTED_TORCH, f.gpus, wsl=f.is_wsl)
    except UserError as exc:
        return exc.hint or str(exc)
    return f"re-run scripts/bootstrap.sh: it installs {choice.spec} from {choice.index_url} for this GPU and driver"


def _linux_driver_packages(f: Facts) -> list[str]:
    return [p for p in f.installed_packages() if LINUX_DRIVER_PACKAGES.match(p)]


def check_wsl_driver(f: Facts) -> Check:
    name = "no Linux driver in WSL"
    if not f.is_wsl:
        return Check(name, "skip", "not WSL: the Linux NVIDIA driver belongs here")
    bad = _linux_driver_packages(f)
    stubs = [p for p in f.env.get("LD_LIBRARY_PATH", "").split(":") if p and "stubs" in p]
    problems = []
    if bad:
        problems.append("installed: " + ", ".join(bad))
    if f.libcuda_copies:
        problems.append("libcuda outside " + WSL_LIB + ": " + ", ".join(f.libcuda_copies))
    if stubs:
        problems.append("LD_LIBRARY_PATH has the CUDA stub libraries: " + ", ".join(stubs))
    if not problems:
        return Check(name, "pass", f"GPU libraries come from the Windows driver ({WSL_LIB})")
    fixes = []
    if bad:
        fixes.append(f"`sudo apt-get remove --purge {' '.join(bad)}`")
    if f.libcuda_copies:
        fixes.append("delete the listed libcuda copies (they shadow the Windows driver's), then `sudo ldconfig`")
    if stubs:
        fixes.append("drop the .../stubs folder from LD_LIBRARY_PATH (stubs are for linking only)")
    return Check(
        name,
        "fail",
        "; ".join(problems),
        " and ".join(fixes) + ". Inside WSL install only a CUDA toolkit package (cuda-toolkit-12-x), never `cuda`, "
        "`cuda-drivers` or nvidia-driver-*: the driver is the Windows one",
    )


def check_gpu(f: Facts) -> Check:
    name = "GPU"
    gpus = f.gpus
    if not gpus:
        return Check(name, "skip", "no NVIDIA GPU listed by nvidia-smi")
    g = gpus[0]
    cap = f"{g.compute_cap[0]}.{g.compute_cap[1]}" if g.compute_cap else "unknown"
    vram = g.memory_total_mib / 1024
    detail = f"{g.name}, compute capability {cap}, {vram:.1f} GiB, driver {g.driver_version}"
    if len(gpus) > 1:
        detail += f" (+{len(gpus) - 1} more)"
    used = g.memory_used_mib / 1024
    if g.compute_cap is not None and g.compute_cap < (5, 0):
        return Check(name, "fail", detail + ": too old for any current PyTorch build", "use a newer NVIDIA GPU")
    if g.compute_cap is not None and g.compute_cap < (7, 5):
        return Check(
            name,
            "warn",
            detail + ": only PyTorch's CUDA 12.6 builds still support it (dropped from torch 2.15), without bf16",
            "expect slow training; scripts/bootstrap.sh picks the cu126 wheels for this card",
        )
    need = f.needs.vram_gib
    if vram < need:
        return Check(
            name,
            "warn",
            detail + f"; {f.needs.preset} with {f.needs.profile} needs about {need:.1f} GiB",
            f"`rwkv1c plan --model {f.needs.preset} --vram {vram:.0f}` lists profiles / ctx_len / micro-batch that fit",
        )
    if vram - used < need:
        return Check(
            name,
            "warn",
            detail + f"; {used:.1f} GiB already in use by other programs",
            "close programs that hold VRAM (browsers, games, other Python processes) before training",
        )
    return Check(name, "pass", detail)


def check_torch(f: Facts) -> Check:
    name = "torch"
    t = f.rt("torch")
    if not t:
        return Check(name, "fail", _runtime_missing(f), "run scripts/bootstrap.sh")
    if t.get("error"):
        return Check(name, "fail", "import failed: " + _first_line(t["error"]), "run scripts/bootstrap.sh")
    version = t.get("version", "?")
    build = t.get("cuda")
    gpus = f.gpus
    if not gpus:
        detail = f"{version}, " + ("CPU build" if not build else f"CUDA {build} build, no GPU")
        return Check(name, "pass", detail + ": training and generation run on the CPU only")
    g = gpus[0]
    if not build:
        return Check(
            name,
            "fail",
            f"{version} is the CPU-only build but an NVIDIA GPU is present",
            "re-run scripts/bootstrap.sh (it picks the CUDA wheel index for this GPU)",
        )
    detail = f"{version}, CUDA {build} build"
    need_driver = min_driver_for_cuda(build)
    if g.driver_major and g.driver_major < need_driver:
        return Check(
            name,
            "fail",
            detail + f" needs driver {need_driver}+, the driver is {g.driver_version}",
            ("update the NVIDIA driver on Windows" if f.is_wsl else "update the NVIDIA driver")
            + ", or "
            + _torch_fix(f, version),
        )
    arch = list(t.get("arch_list") or [])
    if g.compute_cap and arch and not arch_supported(g.compute_cap, arch):
        return Check(
            name,
            "fail",
            detail + f" has no code for compute capability {g.compute_cap[0]}.{g.compute_cap[1]} "
            f"(arch list {' '.join(arch)})",
            _torch_fix(f, version),
        )
    if not t.get("cuda_available"):
        from rwkv1c.hints import hint_for

        visible = f.env.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
            return Check(
                name,
                "fail",
                detail + f": CUDA_VISIBLE_DEVICES={visible!r} hides every GPU from torch",
                "`unset CUDA_VISIBLE_DEVICES` (or set it to 0) in this shell and in ~/.bashrc",
            )
        err = t.get("cuda_error") or "torch.cuda.is_available() is False"
        return Check(
            name, "fail", detail + ": CUDA does not start: " + _first_line(err), hint_for(RuntimeError(err)) or ""
        )
    op = t.get("op")
    if op != "ok":
        from rwkv1c.hints import hint_for

        return Check(
            name,
            "fail",
            detail + ": a tiny CUDA matmul failed: " + _first_line(str(op)),
            hint_for(RuntimeError(str(op))) or "",
        )
    return Check(name, "pass", detail + f", arch {' '.join(arch) or '?'}; a CUDA matmul ran and matched the CPU")


def check_bf16(f: Facts) -> Check:
    name = "bf16"
    gpus = f.gpus
    if not gpus:
        return Check(name, "skip", "no GPU")
    cap = gpus[0].compute_cap
    t = f.rt("torch")
    if cap is not None and cap < (8, 0):
        return Check(
            name,
            "warn",
            f"compute capability {cap[0]}.{cap[1]} has no native bf16 (needs 8.0+, RTX 30xx or newer)",
            "bf16 profiles will run slowly or fail here; prefer a QLoRA profile with fp16 compute, or a newer GPU",
        )
    if t and t.get("cuda_available") and t.get("bf16_op") not in (None, "ok"):
        return Check(name, "fail", "a bf16 matmul failed: " + _first_line(str(t.get("bf16_op"))))
    if t and t.get("cuda_available") and t.get("bf16_op") == "ok":
        return Check(name, "pass", "native bf16; a bf16 matmul ran")
    return Check(name, "pass", "native bf16 (compute capability 8.0+)")


def _lib_check(f: Facts, name: str, key: str, required_for: str, install: str) -> Check:
    r = f.rt(key)
    if not r:
        return Check(name, "fail" if f.gpus else "warn", _runtime_missing(f), install)
    if r.get("error") and not f.gpus and key != "bitsandbytes":
        return Check(name, "skip", "not installed; only used with an NVIDIA GPU (" + _first_line(r["error"], 80) + ")")
    if r.get("error"):
        status: Status = "fail" if key == "bitsandbytes" else "warn"
        from rwkv1c.hints import hint_for

        err = r["error"]
        hint = hint_for(ModuleNotFoundError(err, name=key)) if "No module named" in err else None
        return Check(name, status, f"not usable ({required_for}): " + _first_line(err), hint or install)
    version = r.get("version", "?")
    if not f.gpus:
        return Check(name, "pass", f"{version} imported (its CUDA op needs a GPU; not run)")
    op = r.get("op")
    if op == "ok":
        return Check(name, "pass", f"{version}; {r.get('op_detail', 'a tiny CUDA op ran')}")
    if op is None:
        return Check(name, "warn", f"{version}; its CUDA op was not run ({r.get('op_skipped', 'skipped')})")
    from rwkv1c.hints import hint_for

    hint = hint_for(RuntimeError(str(op))) or install
    return Check(name, "fail", f"{version}; its tiny CUDA op failed: " + _first_line(str(op)), hint)


def check_bitsandbytes(f: Facts) -> Check:
    return _lib_check(
        f,
        "bitsandbytes",
        "bitsandbytes",
        "QLoRA profiles need it",
        "`pip install --force-reinstall bitsandbytes` in the .venv (after torch), then `python -m bitsandbytes`",
    )


def check_triton(f: Facts) -> Check:
    return _lib_check(
        f,
        "Triton",
        "triton",
        "the fast WKV kernel needs it; without it training uses the slower PyTorch kernel",
        "re-run scripts/bootstrap.sh (on a machine with an NVIDIA GPU it installs the GPU extra, pinned by "
        "constraints-gpu.txt); Triton also needs a C compiler: "
        "`sudo apt-get install build-essential`",
    )


def check_fla(f: Facts) -> Check:
    return _lib_check(
        f,
        "flash-linear-attention",
        "fla",
        "the fast WKV kernel; without it training uses the slower PyTorch kernel",
        "re-run scripts/bootstrap.sh (on a machine with an NVIDIA GPU it installs the GPU extra, pinned by "
        "constraints-gpu.txt)",
    )


def _runtime_missing(f: Facts) -> str:
    if f.runtime is None:
        return "not probed"
    return "probe did not report: " + _first_line(str((f.runtime or {}).get("probe_error", "unknown")))


def check_ram(f: Facts) -> Check:
    name = "RAM"
    total = _gib(f.meminfo_kib.get("MemTotal", 0))
    avail = _gib(f.meminfo_kib.get("MemAvailable", 0))
    swap = _gib(f.meminfo_kib.get("SwapTotal", 0))
    need = f.needs.host_ram_gib
    detail = (
        f"{total:.1f} GiB RAM ({avail:.1f} available), {swap:.1f} GiB swap; "
        f"loading {f.needs.preset} needs about {need:.1f} GiB"
    )
    conf = next(iter(f.wslconfig.items()), None)
    if conf is not None:
        keys = parse_wslconfig(conf[1])
        detail += f"; {conf[0]}: memory={keys.get('memory', 'default')}, swap={keys.get('swap', 'default')}"
    mem_advice = max(8, math_ceil(need + 4))
    swap_advice = max(8, math_ceil(need / 2))
    if f.is_wsl:
        hint = (
            "WSL2 gives Linux half of the Windows RAM by default (some older releases at most 8 GB). "
            + WSLCONFIG_HINT.format(mem=mem_advice, swap=swap_advice)
        )
    else:
        hint = (
            "add swap (e.g. `sudo fallocate -l 16G /swapfile && sudo mkswap /swapfile && sudo swapon /swapfile`) "
            "or use a smaller preset"
        )
    if total < need:
        status: Status = "fail" if total + swap < need else "warn"
        return Check(name, status, detail, hint)
    if avail and avail < need:
        return Check(name, "warn", detail + " (other programs hold the rest)", "close other programs; " + hint)
    return Check(name, "pass", detail)


def math_ceil(x: float) -> int:
    return int(-(-x // 1))


def check_paths(f: Facts) -> Check:
    name = "files on Linux disk"
    if not f.is_wsl:
        return Check(name, "skip", "not WSL: no Windows-drive slowdown")
    slow = {role: p for role, p in f.paths.items() if on_windows_drive(p, f)}
    if not slow:
        return Check(name, "pass", "workspace and data are on the WSL disk: " + f.paths.get("workspace", "?"))
    listed = ", ".join(f"{role} {p}" for role, p in slow.items())
    return Check(
        name,
        "warn",
        f"on a Windows drive (read through 9p, many times slower than the WSL disk): {listed}",
        "keep the checkout, data and models inside WSL, e.g. `git clone ... ~/rwkv1c` and move data/ and models/ "
        "there (Windows reaches them as \\\\wsl$\\<distro>\\home\\<user>\\rwkv1c)",
    )


def check_disk(f: Facts) -> Check:
    name = "disk"
    free = f.disk_free.get("models")
    if free is None:
        free = f.disk_free.get("workspace")
    if free is None:
        return Check(name, "skip", "no workspace folder found")
    free_gib = free / 2**30
    ckpt_gib = 0.0 if f.needs.checkpoint_present else f.needs.checkpoint_bytes / 2**30
    need = ckpt_gib + 5.0  # runs, adapters, merged models, pip cache
    detail = f"{free_gib:.1f} GiB free for models/ and runs/; {f.needs.preset} " + (
        "is already downloaded" if f.needs.checkpoint_present else f"needs {ckpt_gib:.1f} GiB to download"
    )
    if free_gib < need:
        hint = "free disk space"
        if f.is_wsl:
            hint += " (the WSL disk grows inside %LocalAppData%; check the Windows drive's free space too)"
        return Check(name, "fail", detail + ", plus ~5 GiB for runs", hint)
    if free_gib < 2 * need:
        return Check(name, "warn", detail + "; little room for merged models and several runs", "free some disk space")
    return Check(name, "pass", detail)


def check_python(f: Facts) -> Check:
    v = ".".join(map(str, f.python))
    if f.python[:2] < (3, 10):
        return Check(
            "Python", "fail", f"Python {v}; rwkv1c needs 3.10+", "install python3.11 and re-run scripts/bootstrap.sh"
        )
    return Check("Python", "pass", f"Python {v}")


def check_settings(f: Facts) -> Check:
    if f.settings_error:
        return Check(
            "settings",
            "fail",
            _first_line(f.settings_error),
            "fix --model / --profile, or configs/workspace.env (see workspace.env.example)",
        )
    return Check("settings", "pass", f"preset {f.needs.preset}, profile {f.needs.profile}")


CHECKS: tuple[Callable[[Facts], Check], ...] = (
    check_platform,
    check_nvidia_smi,
    check_wsl_driver,
    check_gpu,
    check_torch,
    check_bf16,
    check_bitsandbytes,
    check_triton,
    check_fla,
    check_ram,
    check_paths,
    check_disk,
    check_python,
    check_settings,
)


def run_checks(facts: Facts) -> list[Check]:
    """Every check against one set of facts."""
    return [check(facts) for check in CHECKS]


# ---------------------------------------------------------------------------------------------- gathering


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _run(argv: list[str], timeout: float = 30) -> tuple[int, str, str] | None:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return 1, "", f"{type(exc).__name__}: {exc}"
    return p.returncode, p.stdout, p.stderr


def wsl_signs(env: Mapping[str, str]) -> tuple[str, ...]:
    """What marks this Linux as WSL besides its kernel name (a custom WSL2 kernel need not say "microsoft")."""
    signs = [f"WSL_DISTRO_NAME={env['WSL_DISTRO_NAME']}"] if env.get("WSL_DISTRO_NAME") else []
    if os.path.isdir("/run/WSL"):
        signs.append("/run/WSL")
    signs += sorted(glob.glob("/proc/sys/fs/binfmt_misc/WSLInterop*"))  # "WSLInterop" or "WSLInterop-late"
    return tuple(signs)


def _libcuda_copies() -> tuple[str, ...]:
    found = []
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu"):
        for p in glob.glob(f"{folder}/libcuda.so*"):
            real = os.path.realpath(p)
            if not real.startswith(WSL_LIB):
                found.append(p)
    return tuple(sorted(set(found)))


def _mounts() -> tuple[tuple[str, str], ...]:
    out = []
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[1].replace("\\040", " "), parts[2]))
    return tuple(out)


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path("/")


def _needs(preset: str, profile: str, models_dir: Path) -> Needs:
    from rwkv1c.config import load_preset
    from rwkv1c.machine.memory import estimate, load_coefficients, resolve_model, resolve_profile

    coeffs = load_coefficients()
    info = resolve_model(preset)
    prof = resolve_profile(profile)
    run = prof.run(grad_ckpt=True)  # the profile's ctx_len and micro-batch, at their leanest
    est = estimate(info.shape, run, coeffs, info.checkpoint_bytes)
    is_file = Path(preset).expanduser().is_file()
    checkpoint = "" if is_file else load_preset(preset).checkpoint
    return Needs(
        preset=preset,
        profile=profile,
        quant=prof.quant,
        checkpoint_bytes=info.checkpoint_bytes,
        host_ram_gib=est.host_ram_gib,
        vram_gib=est.device_gib,
        checkpoint_present=is_file or (bool(checkpoint) and (models_dir / checkpoint).is_file()),
    )


def gather_facts(
    *, model: str | None = None, profile: str | None = None, deep: bool = True, probe_timeout: float = 300
) -> Facts:
    """Read the system once. ``deep`` runs the tiny CUDA ops (Triton kernels compile on first use)."""
    from rwkv1c.config import load_workspace, output_folder, workspace_root

    facts = Facts(
        system=platform.system(),
        proc_version=_read("/proc/version").strip(),
        env={
            k: v
            for k, v in os.environ.items()
            if k in ("LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "WSL_DISTRO_NAME", "PATH")
        },
        wsl_lib_dir=os.path.isdir(WSL_LIB),
        meminfo_kib=parse_meminfo(_read("/proc/meminfo")),
        mounts=_mounts(),
        python=tuple(sys.version_info[:3]),  # type: ignore[arg-type]
    )
    facts.wsl_signs = wsl_signs(facts.env)
    smi = query_gpus()  # every nvidia-smi on PATH and WSL's, until one lists a GPU
    facts.nvidia_smi_failures = smi.failures
    facts.nvidia_smi_on_path = smi.on_path
    if smi.exe:
        facts.nvidia_smi, facts.nvidia_smi_csv = smi.exe, smi.csv
    elif smi.failures:
        facts.nvidia_smi, facts.nvidia_smi_error = smi.failures[0]
    if facts.is_wsl:
        res = _run(["dpkg-query", "-W", "-f=${Package}\t${db:Status-Abbrev}\t${Version}\n"])
        facts.dpkg = res[1] if res and res[0] == 0 else None
        facts.libcuda_copies = _libcuda_copies()
        facts.wslconfig = {p: _read(p) for p in sorted(glob.glob("/mnt/c/Users/*/.wslconfig"))[:3]}
    root = workspace_root()
    models_dir = output_folder(root, Path("models/base"))
    try:
        ws = load_workspace(root)
        # the folders `download`, `prepare` and `train` write to (the same rule for relative settings)
        models_dir = output_folder(root, ws.models_dir).resolve()
        roles = {
            "workspace": root,
            "models": models_dir,
            "data": output_folder(root, ws.data_dir).resolve(),
            "runs": output_folder(root, ws.runs_dir).resolve(),
        }
        facts.needs = _needs(model or ws.model_preset, profile or ws.profile, models_dir)
    except UserError as exc:
        # message and hint on one line: the check shows one line, and str(exc) puts the hint last
        facts.settings_error = str(exc.args[0]) + (f"; {exc.hint}" if exc.hint else "")
        roles = {"workspace": root, "models": models_dir}
    facts.paths = {role: str(p.resolve()) for role, p in roles.items()}
    facts.disk_free = {role: shutil.disk_usage(_nearest_existing(p)).free for role, p in roles.items()}
    facts.runtime = probe_in_child(deep=deep and bool(facts.gpus), timeout=probe_timeout)
    return facts


# ---------------------------------------------------------------------------------------------- runtime probe

_TRITON_KERNEL = """
import triton
import triton.language as tl


@triton.jit
def add_one(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    tl.store(y_ptr + i, tl.load(x_ptr + i, mask=mask) + 1.0, mask=mask)
"""


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _probe_torch(deep: bool) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"version": torch.__version__, "cuda": torch.version.cuda}
    try:
        out["cuda_available"] = bool(torch.cuda.is_available())
        if not out["cuda_available"] and torch.version.cuda:
            try:
                torch.cuda.init()
            except Exception as exc:  # the real reason is in the init error
                out["cuda_error"] = _err(exc)
    except Exception as exc:
        out["cuda_available"] = False
        out["cuda_error"] = _err(exc)
    if not out["cuda_available"]:
        return out
    out["device_count"] = torch.cuda.device_count()
    out["device"] = torch.cuda.get_device_name(0)
    out["capability"] = list(torch.cuda.get_device_capability(0))
    out["arch_list"] = torch.cuda.get_arch_list()
    out["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(64, 64, generator=g, dtype=torch.float64)
        got = (a.cuda() @ a.cuda()).cpu()
        out["op"] = "ok" if torch.allclose(got, a @ a, rtol=1e-6, atol=1e-6) else "CUDA matmul differs from CPU"
    except Exception as exc:
        out["op"] = _err(exc)
    try:
        b = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
        ref = b.float() @ b.float()
        ok = ((b @ b).float() - ref).abs().max().item() < 0.05 * ref.abs().max().item()
        out["bf16_op"] = "ok" if ok else "bf16 matmul differs from fp32"
    except Exception as exc:
        out["bf16_op"] = _err(exc)
    return out


def _op_skipped(deep: bool) -> str | None:
    """Why a probe's CUDA op is not run (no GPU, or --no-deep), or None when it runs."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None if deep else "--no-deep"


def _probe_bitsandbytes(deep: bool) -> dict[str, Any]:
    import bitsandbytes as bnb
    import torch

    out: dict[str, Any] = {"version": getattr(bnb, "__version__", "?")}
    if skipped := _op_skipped(deep):
        out["op_skipped"] = skipped
        return out
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    w = torch.randn(256, 128, device="cuda", dtype=torch.bfloat16)
    q, state = quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    back = dequantize_4bit(q, state)
    rel = ((back.float() - w.float()).abs().mean() / w.float().abs().mean()).item()
    out["op"] = "ok" if rel < 0.2 else f"NF4 round trip error {rel:.3f}"
    out["op_detail"] = f"NF4 quantise/dequantise on the GPU ran (mean relative error {rel:.3f})"
    return out


def _probe_triton(deep: bool) -> dict[str, Any]:
    import importlib.util
    import tempfile

    import torch
    import triton

    out: dict[str, Any] = {"version": triton.__version__}
    if skipped := _op_skipped(deep):
        out["op_skipped"] = skipped
        return out
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "rwkv1c_triton_probe.py"
        src.write_text(_TRITON_KERNEL, encoding="utf-8")
        spec = importlib.util.spec_from_file_location("rwkv1c_triton_probe", src)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        x = torch.arange(100, device="cuda", dtype=torch.float32)
        y = torch.empty_like(x)
        mod.add_one[(1,)](x, y, 100, BLOCK=128)
        ok = torch.equal(y.cpu(), x.cpu() + 1)
    out["op"] = "ok" if ok else "Triton kernel gave wrong numbers"
    out["op_detail"] = "a Triton kernel compiled and ran"
    return out


def _probe_fla(deep: bool) -> dict[str, Any]:
    import fla
    import torch

    out: dict[str, Any] = {"version": getattr(fla, "__version__", "?")}
    if skipped := _op_skipped(deep):
        out["op_skipped"] = skipped
        return out
    from rwkv1c.model.wkv import wkv_fla, wkv_reference

    g = torch.Generator().manual_seed(0)
    B, T, H, N = 1, 32, 2, 64

    def rnd(scale: float) -> torch.Tensor:
        return (torch.randn(B, T, H, N, generator=g) * scale).cuda()

    r, k, v = rnd(0.5), rnd(0.5), rnd(0.5)
    log_w = -torch.exp(rnd(0.5) - 1.0)
    kk = torch.nn.functional.normalize(rnd(1.0), dim=-1)
    a, b = -kk, kk * 0.5
    y_ref, _ = wkv_reference(r, log_w, k, v, a, b)
    y, _ = wkv_fla(r, log_w, k, v, a, b)
    err = ((y.float() - y_ref.float()).abs().max() / y_ref.float().abs().max().clamp_min(1e-6)).item()
    out["op"] = "ok" if err < 0.05 else f"chunk_rwkv7 differs from the reference WKV by {err:.3f}"
    out["op_detail"] = f"chunk_rwkv7 ran and matched the reference WKV (max relative error {err:.1e})"
    return out


PROBES: dict[str, Callable[[bool], dict[str, Any]]] = {
    "torch": _probe_torch,
    "bitsandbytes": _probe_bitsandbytes,
    "triton": _probe_triton,
    "fla": _probe_fla,
}


def probe_runtime(deep: bool = True, emit: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Import each library and run its tiny op; one dict per library (errors are captured, never raised)."""
    results: dict[str, Any] = {}
    for name, probe in PROBES.items():
        try:
            results[name] = probe(deep)
        except BaseException as exc:  # an import or kernel failure is the finding
            if isinstance(exc, KeyboardInterrupt):
                raise
            results[name] = {"error": _err(exc)}
        if emit is not None:
            emit(name, results[name])
    return results


def probe_main(deep: bool) -> None:
    """Child-process entry: one JSON line per library, flushed, so a hang or crash loses only the rest."""

    def emit(name: str, result: dict[str, Any]) -> None:
        sys.stdout.write("RWKV1C-PROBE " + jsonlib.dumps({name: result}) + "\n")
        sys.stdout.flush()

    probe_runtime(deep, emit)


def probe_in_child(deep: bool = True, timeout: float = 300) -> dict[str, Any]:
    """Run the probe in a child Python, so a crashing or hanging CUDA library cannot take doctor down."""
    code = f"from rwkv1c.machine.doctor import probe_main; probe_main({deep!r})"
    out = ""
    err_text = ""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[1])  # so the child imports this same rwkv1c
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
        out, err_text = p.stdout, p.stderr
        failure = None if p.returncode == 0 else f"probe exited with code {p.returncode}: {_first_line(err_text)}"
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        failure = f"probe did not finish within {timeout:.0f} s (a CUDA call hung?)"
    results: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith("RWKV1C-PROBE "):
            results.update(jsonlib.loads(line[len("RWKV1C-PROBE ") :]))
    if failure:
        results["probe_error"] = failure
    return results


# ---------------------------------------------------------------------------------------------- output

_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}


def format_checks(checks: list[Check]) -> str:
    """A readable table: status, check name, detail; the fix indented below each problem."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{_MARK[c.status]}  {c.name:<{width}}  {c.detail}")
        if c.hint and c.status in ("warn", "fail"):
            for i, hint_line in enumerate(c.hint.splitlines()):
                lines.append(f"{'':6}{'':<{width}}  {'fix: ' if i == 0 else '     '}{hint_line}")
    counts = {s: sum(c.status == s for c in checks) for s in _MARK}
    lines.append("")
    lines.append(
        f"{counts['pass']} passed, {counts['warn']} warning{'s' * (counts['warn'] != 1)}, "
        f"{counts['fail']} failed, {counts['skip']} skipped"
    )
    return "\n".join(lines)
