"""The NVIDIA side of set-up: finding a working nvidia-smi, and which torch build fits the GPU, driver and version.

`scripts/bootstrap.sh` asks this module what to install (`python -m rwkv1c.machine.nvidia`), `rwkv1c doctor`
and `rwkv1c plan` ask it about the GPU. No torch import: it runs before torch is installed.

Facts behind `TORCH_RELEASES` (Linux x86-64 wheels on download.pytorch.org; PyTorch's RELEASE.md support
matrix and its per-release CUDA RFCs, and the Requires-Dist of the PyPI wheels):

- 2.7: cu118, cu126 (PyPI), cu128 (the first with Blackwell code; Turing and newer).
- 2.8: cu126, cu128 (PyPI), cu129; 12.8 / 12.9 carry Volta to Blackwell, Maxwell and Pascal only in 12.6.
- 2.9, 2.10: cu126, cu128 (PyPI), cu130 (Turing to Blackwell: CUDA 13 has no Maxwell, Pascal or Volta).
- 2.11: cu126, cu128 (Volta dropped from it), cu130 (PyPI).
- 2.12, 2.13: cu126, cu130 (PyPI), cu132 (experimental); 12.8 is gone.
- 2.14: cu126 (legacy), cu130 (PyPI), cu132.
- 2.15: cu130, cu132 (PyPI); 12.6 is gone, so nothing runs on Maxwell, Pascal or Volta any more.

A CUDA 12.x build needs driver branch 525 or newer, 13.x needs 580 (minor-version compatibility); 11.8
needs 450. Under WSL2 the driver is the Windows one.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rwkv1c.errors import UserError

WSL_LIB = "/usr/lib/wsl/lib"
PYTORCH_INDEX = "https://download.pytorch.org/whl/"
SMI_FIELDS = "index,name,compute_cap,memory.total,memory.used,driver_version"
TESTED_TORCH = "2.13.0"

# ---------------------------------------------------------------------------------------------- nvidia-smi


@dataclass(frozen=True)
class Gpu:
    """One row of `nvidia-smi --query-gpu=...`."""

    index: int
    name: str
    compute_cap: tuple[int, int] | None
    memory_total_mib: int
    memory_used_mib: int
    driver_version: str

    @property
    def driver_major(self) -> int:
        match = re.match(r"(\d+)", self.driver_version)
        return int(match.group(1)) if match else 0

    @property
    def cap_text(self) -> str:
        return f"{self.compute_cap[0]}.{self.compute_cap[1]}" if self.compute_cap else "unknown"


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Rows of `nvidia-smi --query-gpu=index,name,compute_cap,memory.total,memory.used,driver_version
    --format=csv,nounits` (with its header; compute_cap may be missing on old drivers)."""
    rows = list(csv.reader(io.StringIO(text.strip()), skipinitialspace=True))
    if not rows:
        return []
    header = [re.sub(r"\s*\[.*\]$", "", h.strip()) for h in rows[0]]
    gpus = []
    for row in rows[1:]:
        if len(row) != len(header):
            continue
        d = dict(zip(header, (c.strip() for c in row)))
        cap = None
        match = re.match(r"(\d+)\.(\d+)", d.get("compute_cap", ""))
        if match:
            cap = (int(match.group(1)), int(match.group(2)))

        def mib(key: str, d: dict[str, str] = d) -> int:
            m = re.match(r"(\d+)", d.get(key, ""))
            return int(m.group(1)) if m else 0

        gpus.append(
            Gpu(
                index=int(d.get("index", "0") or 0),
                name=d.get("name", "?"),
                compute_cap=cap,
                memory_total_mib=mib("memory.total"),
                memory_used_mib=mib("memory.used"),
                driver_version=d.get("driver_version", ""),
            )
        )
    return gpus


def smi_candidates(path: str | None = None, wsl_lib: str = WSL_LIB) -> list[str]:
    """Every nvidia-smi on PATH, in PATH order, then WSL2's own; each file once.

    All of them, not only the first: a Linux driver package installed inside WSL puts a /usr/bin/nvidia-smi
    that cannot reach the GPU ahead of the working /usr/lib/wsl/lib/nvidia-smi.
    """
    folders = (os.environ.get("PATH", "") if path is None else path).split(os.pathsep)
    found: list[str] = []
    seen: set[str] = set()
    for folder in [*folders, wsl_lib]:
        if not folder:  # an empty PATH entry means the current folder: never run a tool from there
            continue
        exe = os.path.join(folder, "nvidia-smi")
        if os.path.isfile(exe) and os.access(exe, os.X_OK) and os.path.realpath(exe) not in seen:
            seen.add(os.path.realpath(exe))
            found.append(exe)
    return found


def run_smi(exe: str, timeout: float = 30) -> tuple[str | None, str | None]:
    """(CSV of SMI_FIELDS, None) from one nvidia-smi, or (None, why it failed). Drivers too old to know
    compute_cap are asked again without it."""
    for query in (SMI_FIELDS, SMI_FIELDS.replace("compute_cap,", "")):
        try:
            p = subprocess.run(
                [exe, f"--query-gpu={query}", "--format=csv,nounits"], capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return None, f"did not answer within {timeout:.0f} s"
        except OSError as exc:
            return None, f"cannot run it: {exc.strerror or exc}"
        if p.returncode == 0:
            return (p.stdout, None) if parse_nvidia_smi(p.stdout) else (None, "it lists no GPU")
        if "compute_cap" not in p.stdout + p.stderr:
            lines = [ln.strip() for ln in (p.stderr + "\n" + p.stdout).splitlines() if ln.strip()]
            return None, (lines[0] if lines else f"exit code {p.returncode}")
    return None, "it rejected the query"


@dataclass(frozen=True)
class SmiResult:
    """What the nvidia-smi candidates said: the first that listed a GPU, and every one that failed before it."""

    exe: str | None = None
    csv: str | None = None
    failures: tuple[tuple[str, str], ...] = ()  # (path, why), in the order tried
    on_path: bool = False  # whether `exe` is reached through PATH (not only as WSL's own)

    @property
    def gpus(self) -> list[Gpu]:
        return parse_nvidia_smi(self.csv) if self.csv else []


def query_gpus(
    candidates: Sequence[str] | None = None,
    run: Callable[[str], tuple[str | None, str | None]] = run_smi,
    path: str | None = None,
) -> SmiResult:
    """Ask each nvidia-smi candidate in turn (default: `smi_candidates()`); the first that lists a GPU wins."""
    path = os.environ.get("PATH", "") if path is None else path
    failures: list[tuple[str, str]] = []
    for exe in smi_candidates(path) if candidates is None else candidates:
        text, error = run(exe)
        if text is not None:
            on_path = os.path.dirname(exe) in [p for p in path.split(os.pathsep) if p]
            return SmiResult(exe, text, tuple(failures), on_path)
        failures.append((exe, error or "failed"))
    return SmiResult(failures=tuple(failures))


# ---------------------------------------------------------------------------------------------- torch builds


def min_driver_for_cuda(cuda: str) -> int:
    """Smallest driver branch for a CUDA runtime (minor-version compatibility): 13.x 580, 12.x 525, 11.x 450."""
    major = int(cuda.split(".")[0])
    return {11: 450, 12: 525, 13: 580}.get(major, 580 if major > 13 else 450)


@dataclass(frozen=True)
class CudaBuild:
    """One CUDA build of a torch release on download.pytorch.org."""

    tag: str  # the index's name and the wheel's local version: "cu126" -> torch==2.13.0+cu126
    min_cap: tuple[int, int]  # the oldest compute capability it has code for
    blackwell: bool  # code for compute capability 10.x / 12.x (RTX 50xx, B200)
    experimental: bool = False  # published, but never chosen unless TORCH_INDEX_URL names it

    @property
    def cuda(self) -> str:
        digits = self.tag[2:]
        return f"{digits[:-1]}.{digits[-1]}"

    @property
    def min_driver(self) -> int:
        return min_driver_for_cuda(self.cuda)

    def problem(self, gpu: Gpu) -> str | None:
        """Why this build cannot run on ``gpu`` with its driver, or None when it can."""
        cap = gpu.compute_cap
        if cap is not None and cap < self.min_cap:
            oldest = f"{self.min_cap[0]}.{self.min_cap[1]}"
            return f"has no code for compute capability {gpu.cap_text} (its oldest is {oldest})"
        if cap is not None and cap >= (10, 0) and not self.blackwell:
            return f"has no code for compute capability {gpu.cap_text} (Blackwell)"
        if gpu.driver_major < self.min_driver:
            return f"needs NVIDIA driver {self.min_driver} or newer (this one is {gpu.driver_version or 'unknown'})"
        return None


@dataclass(frozen=True)
class TorchRelease:
    """The CUDA builds of one torch minor release, in the order bootstrap prefers them."""

    latest: str  # the newest patch release, for suggestions
    pypi: str  # the CUDA build PyPI's own Linux wheel is
    builds: tuple[CudaBuild, ...]


CU118 = CudaBuild("cu118", (3, 7), blackwell=False)
CU126 = CudaBuild("cu126", (5, 0), blackwell=False)
CU128_VOLTA = CudaBuild("cu128", (7, 0), blackwell=True)
CU128 = CudaBuild("cu128", (7, 5), blackwell=True)
CU129 = CudaBuild("cu129", (7, 0), blackwell=True)
CU130 = CudaBuild("cu130", (7, 5), blackwell=True)
CU132_EXPERIMENTAL = CudaBuild("cu132", (7, 5), blackwell=True, experimental=True)
CU132 = CudaBuild("cu132", (7, 5), blackwell=True)

# Preference: PyPI's own build first (the most used), then the one that keeps older cards or drivers working.
TORCH_RELEASES: dict[str, TorchRelease] = {
    "2.7": TorchRelease("2.7.1", "cu126", (CU126, CU128, CU118)),
    "2.8": TorchRelease("2.8.0", "cu128", (CU128_VOLTA, CU126, CU129)),
    "2.9": TorchRelease("2.9.1", "cu128", (CU128_VOLTA, CU126, CU130)),
    "2.10": TorchRelease("2.10.0", "cu128", (CU128_VOLTA, CU126, CU130)),
    "2.11": TorchRelease("2.11.0", "cu130", (CU130, CU128, CU126)),
    "2.12": TorchRelease("2.12.1", "cu130", (CU130, CU126, CU132_EXPERIMENTAL)),
    "2.13": TorchRelease("2.13.0", "cu130", (CU130, CU126, CU132_EXPERIMENTAL)),
    "2.14": TorchRelease("2.14.1", "cu130", (CU130, CU132, CU126)),
    "2.15": TorchRelease("2.15.0", "cu132", (CU132, CU130)),
}


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _release(version: str) -> TorchRelease | None:
    return TORCH_RELEASES.get(_minor(version))


@dataclass(frozen=True)
class TorchChoice:
    """What bootstrap installs: the pip requirement, the extra index it comes from, and why."""

    spec: str  # "torch==2.13.0+cu130"
    index_url: str  # "" = pip's own index (PyPI, or the mirror pip is set up with)
    cuda: bool  # a CUDA build for an NVIDIA GPU: the GPU extra (Triton, flash-linear-attention) goes with it
    reason: str
    size: str  # how much pip downloads, so a long wait is expected


CUDA_SIZE = "about 3 GB with its NVIDIA libraries, several minutes"
CPU_SIZE = "about 200 MB"


def _gpu_words(gpus: Sequence[Gpu]) -> str:
    g = gpus[0]
    more = f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else ""
    return f"{g.name}{more}, compute capability {g.cap_text}, driver {g.driver_version}"


def _problems(build: CudaBuild, gpus: Sequence[Gpu]) -> list[str]:
    return [p for p in (build.problem(g) for g in gpus) if p]


def _fits(build: CudaBuild, gpus: Sequence[Gpu]) -> bool:
    return not build.experimental and not _problems(build, gpus)


def _auto_build(release: TorchRelease, gpus: Sequence[Gpu]) -> CudaBuild | None:
    fitting = [b for b in release.builds if _fits(b, gpus)]
    if any(g.compute_cap is None for g in gpus):  # unknown card: the build with the oldest cards is the safest
        fitting.sort(key=lambda b: b.min_cap)
    return fitting[0] if fitting else None


def _fixes(version: str, gpus: Sequence[Gpu], wsl: bool, chosen: CudaBuild | None = None) -> str:
    """How to get a torch build that runs here: a newer driver, letting bootstrap choose, another TORCH_VERSION,
    or the CPU build. ``chosen``: the build TORCH_INDEX_URL names, when it names one."""
    fixes = []
    release = _release(version)
    updated = [_with_driver(g) for g in gpus]
    candidates = (
        [chosen] if chosen is not None else [b for b in (release.builds if release else ()) if _fits(b, updated)]
    )
    if candidates and all(not _problems(b, updated) for b in candidates):
        need = min(b.min_driver for b in candidates)
        where = " on Windows (WSL2 uses the Windows driver)" if wsl else ""
        fixes.append(f"update the NVIDIA driver{where} to {need} or newer, then run this again")
    auto = _auto_build(release, gpus) if release is not None and chosen is not None else None
    if auto is not None:
        fixes.append(f"delete TORCH_INDEX_URL from configs/workspace.env: bootstrap then installs the {auto.tag} build")
    if auto is None:
        newest_first = sorted(TORCH_RELEASES.items(), key=lambda kv: tuple(map(int, kv[0].split("."))), reverse=True)
        for key, other in newest_first:
            build = _auto_build(other, gpus)
            if key != _minor(version) and build is not None:
                also = " and delete TORCH_INDEX_URL" if chosen is not None else ""
                fixes.append(
                    f"set TORCH_VERSION={other.latest}{also} in configs/workspace.env (its {build.tag} build runs on "
                    f"this card and driver; rwkv1c is tested with torch {TESTED_TORCH})"
                )
                break
    if not fixes:
        fixes.append(
            f"no torch build runs on this card: use the CPU build (TORCH_INDEX_URL={PYTORCH_INDEX}cpu in "
            "configs/workspace.env; far too slow for real fine-tuning) or a newer GPU"
        )
    return "; or ".join(fixes)


def _with_driver(gpu: Gpu) -> Gpu:
    """The same GPU with a current driver (to ask whether a driver update alone would do)."""
    return Gpu(gpu.index, gpu.name, gpu.compute_cap, gpu.memory_total_mib, gpu.memory_used_mib, "999.0")


def _check_version(version: str) -> None:
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", version):
        raise UserError(
            f"TORCH_VERSION={version!r} is not a release number",
            hint=f"set TORCH_VERSION={TESTED_TORCH} (or another X.Y.Z) in configs/workspace.env",
        )


def choose_torch(
    version: str, gpus: Sequence[Gpu], explicit_index: str | None = None, wsl: bool = False
) -> TorchChoice:
    """The torch build for ``version`` on this machine, or a UserError naming the fix.

    ``explicit_index`` is TORCH_INDEX_URL from configs/workspace.env when the file sets it ("" = pip's own
    index); None lets this choose: the CPU build without an NVIDIA GPU (PyPI's Linux wheel is the multi-GB
    CUDA build), else the first build of `TORCH_RELEASES` that runs on every listed GPU with its driver.
    A build that cannot run here, or a version with no build for the card, stops with the fix rather than
    installing something that fails at the first CUDA call.
    """
    _check_version(version)
    release = _release(version)
    if explicit_index is not None:
        return _explicit(version, release, gpus, explicit_index.strip(), wsl)
    if not gpus:
        return TorchChoice(
            f"torch=={version}+cpu",
            PYTORCH_INDEX + "cpu",
            cuda=False,
            reason="no NVIDIA GPU found: the CPU build from PyTorch's CPU index; PyPI's Linux wheel is the multi-GB "
            "CUDA one",
            size=CPU_SIZE,
        )
    if release is None:
        known = ", ".join(TORCH_RELEASES)
        raise UserError(
            f"torch {version}: which CUDA builds it has is not known here (known: {known})",
            hint=f"set TORCH_VERSION={TESTED_TORCH} (tested), or name the build yourself in configs/workspace.env, "
            f"e.g. TORCH_INDEX_URL={PYTORCH_INDEX}cu130",
        )
    build = _auto_build(release, gpus)
    if build is None:
        seen = "; ".join(
            f"{b.tag} {'; '.join(sorted(set(_problems(b, gpus)))) or 'is experimental'}" for b in release.builds
        )
        raise UserError(
            f"no torch {version} build runs on {_gpu_words(gpus)}: {seen}",
            hint=_fixes(version, gpus, wsl),
        )
    return TorchChoice(
        f"torch=={version}+{build.tag}",
        PYTORCH_INDEX + build.tag,
        cuda=True,
        reason=f"{_gpu_words(gpus)}: the CUDA {build.cuda} build (needs driver {build.min_driver}+)",
        size=CUDA_SIZE,
    )


def _explicit(version: str, release: TorchRelease | None, gpus: Sequence[Gpu], url: str, wsl: bool) -> TorchChoice:
    """TORCH_INDEX_URL as the user set it, checked against the release and this GPU where the build is known."""
    match = re.search(r"/whl/(cpu|cu\d{3})/?$", url)
    tag = match.group(1) if match else (release.pypi if release is not None and not url else None)
    origin = "TORCH_INDEX_URL in configs/workspace.env"
    if tag == "cpu":
        note = " (an NVIDIA GPU is present: training will not use it)" if gpus else ""
        return TorchChoice(f"torch=={version}+cpu", url, False, f"{origin}: the CPU build{note}", CPU_SIZE)
    # A build-specific index gets the build's local version (torch==2.13.0+cu130): a plain ==2.13.0 would accept
    # the CPU build already installed and never switch to the CUDA one.
    spec = f"torch=={version}+{tag}" if match else f"torch=={version}"
    where = url or "pip's own index (PyPI)"
    if tag is None:  # a mirror or a custom index: nothing to check it against
        return TorchChoice(spec, url, bool(gpus), f"{origin}: {where}", CUDA_SIZE if gpus else "unknown")
    build = next((b for b in release.builds if b.tag == tag), None) if release is not None else None
    if release is not None and build is None:
        raise UserError(
            f"torch {version} has no {tag} build ({origin}); its builds: cpu, "
            + ", ".join(b.tag for b in release.builds),
            hint="set TORCH_INDEX_URL to one of them, or delete it from configs/workspace.env and let bootstrap choose",
        )
    if build is None:  # a version not in the table: only the driver can be checked
        build = CudaBuild(tag, (0, 0), blackwell=True)
    problems = sorted(set(_problems(build, gpus)))
    if problems:
        raise UserError(
            f"torch {version}+{tag} ({origin}) cannot run on {_gpu_words(gpus)}: it {'; it '.join(problems)}",
            hint=_fixes(version, gpus, wsl, chosen=build),
        )
    if not gpus:
        return TorchChoice(spec, url, False, f"{origin}: {where} (no NVIDIA GPU found: it runs on the CPU)", CUDA_SIZE)
    return TorchChoice(
        spec, url, True, f"{origin}: {where}, the CUDA {build.cuda} build; {_gpu_words(gpus)}", CUDA_SIZE
    )


# ---------------------------------------------------------------------------------------------- bootstrap's plan


def gpu_constraints(version: str, path: Path) -> tuple[str, str]:
    """(constraints file for the GPU extra, or "" ; a note) for TORCH_VERSION ``version``.

    The file pins fla-core and triton for the torch release named in its `torch==` line; triton must be the
    version that torch's own CUDA wheels require, so with another TORCH_VERSION the pins would conflict and
    pip is left to pick them (triton then follows torch's pin).
    """
    if not path.is_file():
        return "", f"{path.name} is missing: fla-core and triton versions are left to pip"
    pinned = re.search(r"^torch==(\S+)", path.read_text(encoding="utf-8"), re.MULTILINE)
    tested = pinned.group(1) if pinned else ""

    def padded(v: str) -> tuple[int, ...]:
        parts = [int(x) for x in re.findall(r"\d+", v.split("+")[0])]
        return tuple(parts + [0] * (3 - len(parts)))

    if tested and padded(tested) == padded(version):
        return path.name, ""
    return "", (
        f"{path.name} is tested with torch {tested or '?'}, not {version}: fla-core and triton versions are left "
        "to pip (an untested combination)"
    )


def install_plan(root: Path, smi: SmiResult) -> tuple[dict[str, str], list[str]]:
    """What scripts/bootstrap.sh installs here: (values for the script, lines to show the user).

    Reads configs/workspace.env with the same loader every command uses (rwkv1c.config).
    """
    from rwkv1c.config import load_workspace, read_env_file

    settings_file = root / "configs" / "workspace.env"
    raw = read_env_file(settings_file) if settings_file.is_file() else {}
    ws = load_workspace(root)
    notes = []
    for exe, why in smi.failures:
        if smi.exe:
            notes.append(f"{exe} fails ({why}); using {smi.exe} instead (`rwkv1c doctor` explains the broken one)")
        else:
            notes.append(f"{exe} fails ({why}): treating this machine as one without an NVIDIA GPU")
    wsl = os.path.isdir(WSL_LIB) or (smi.exe or "").startswith(WSL_LIB)
    choice = choose_torch(ws.torch_version, smi.gpus, raw.get("TORCH_INDEX_URL"), wsl=wsl)
    notes.append(f"torch: {choice.spec} ({choice.reason})")
    constraints, note = gpu_constraints(ws.torch_version, root / "constraints-gpu.txt") if choice.cuda else ("", "")
    if note:
        notes.append(note)
    values = {
        "torch_spec": choice.spec,
        "index_url": choice.index_url,
        "gpu_extra": "yes" if choice.cuda else "no",
        "gpu_constraints": constraints,
        "download": choice.size,
    }
    return values, notes


def main() -> int:
    """`python -m rwkv1c.machine.nvidia`: bootstrap's plan as KEY=value lines on stdout, the why on stderr."""
    from rwkv1c.config import workspace_root

    try:
        values, notes = install_plan(workspace_root(), query_gpus())
    except UserError as exc:
        hint = f"\n  fix: {exc.hint}" if exc.hint else ""
        print(f"bootstrap: {exc.args[0]}{hint}", file=sys.stderr)
        return 1
    for line in notes:
        print(f"bootstrap: {line}", file=sys.stderr)
    for key, value in values.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
