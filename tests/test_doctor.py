"""doctor's checks against made-up system facts (WSL1/WSL2/Linux, nvidia-smi outputs, dpkg lists, paths), and
one real run on this machine."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rwkv1c.commands.doctor import doctor as doctor_verb
from rwkv1c.machine import doctor as d
from rwkv1c.machine import nvidia
from rwkv1c.machine.doctor import Facts, Needs

WSL2 = (
    "Linux version 5.15.167.4-microsoft-standard-WSL2 (root@f9c826d3017f) (gcc (GCC) 11.2.0, GNU ld (GNU Binutils) "
    "2.37) #1 SMP Tue Nov 5 00:21:55 UTC 2024"
)
WSL1 = "Linux version 4.4.0-22621-Microsoft (Microsoft@Microsoft.com) (gcc version 5.4.0 (GCC) ) #2215-Microsoft"
UBUNTU = "Linux version 6.8.0-49-generic (buildd@lcy02-amd64-103) (x86_64-linux-gnu-gcc-12 (Ubuntu 12.3.0)) #49-Ubuntu"
HEADER = "index, name, compute_cap, memory.total [MiB], memory.used [MiB], driver_version"
RTX4090 = HEADER + "\n0, NVIDIA GeForce RTX 4090, 8.9, 24564, 1536, 566.36\n"
RTX5090 = HEADER + "\n0, NVIDIA GeForce RTX 5090, 12.0, 32607, 1200, 576.80\n"
RTX3060 = HEADER + "\n0, NVIDIA GeForce RTX 3060, 8.6, 12288, 300, 581.15\n"
GTX1080 = HEADER + "\n0, NVIDIA GeForce GTX 1080 Ti, 6.1, 11264, 200, 560.94\n"
OLD_SMI = "index, name, memory.total [MiB], memory.used [MiB], driver_version\n0, Tesla T4, 15360, 0, 470.82.01\n"
SMI_DRIVER_FAIL = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest "
    "NVIDIA driver is installed and running."
)
TORCH_OK = {
    "version": "2.11.0+cu128",
    "cuda": "12.8",
    "cuda_available": True,
    "arch_list": ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"],
    "op": "ok",
    "bf16_op": "ok",
}
LIB_OK = {"version": "1.0", "op": "ok", "op_detail": "a tiny CUDA op ran"}
GIB_KIB = 2**20


def rt(**parts: dict[str, Any]) -> dict[str, Any]:
    """A healthy runtime probe result with some libraries replaced."""
    return {"torch": TORCH_OK, "bitsandbytes": LIB_OK, "triton": LIB_OK, "fla": LIB_OK, **parts}


def wsl_box(**over: Any) -> Facts:
    """A healthy WSL2 machine with an RTX 4090, 32 GiB of VM RAM and the checkout in the Linux home."""
    base = Facts(
        system="Linux",
        proc_version=WSL2,
        wsl_lib_dir=True,
        nvidia_smi="/usr/lib/wsl/lib/nvidia-smi",
        nvidia_smi_on_path=True,
        nvidia_smi_csv=RTX4090,
        dpkg="python3\tii \t3.12\ncuda-toolkit-12-6\tii \t12.6.3-1\n",
        meminfo_kib={"MemTotal": 32 * GIB_KIB, "MemAvailable": 28 * GIB_KIB, "SwapTotal": 8 * GIB_KIB},
        mounts=(("/", "ext4"), ("/mnt/c", "9p"), ("/usr/lib/wsl/drivers", "9p")),
        paths={"workspace": "/home/me/rwkv1c", "data": "/home/me/rwkv1c/data", "models": "/home/me/rwkv1c/models/base"},
        disk_free={"workspace": 200 * 2**30, "models": 200 * 2**30},
        python=(3, 12, 3),
        runtime=rt(),
        needs=Needs(preset="rwkv7-1.5b", profile="lora-bf16", checkpoint_bytes=3.06e9, host_ram_gib=4.8, vram_gib=5.3),
    )
    return replace(base, **over)


def by_name(facts: Facts) -> dict[str, d.Check]:
    return {c.name: c for c in d.run_checks(facts)}


def test_healthy_wsl2_box_passes_everything() -> None:
    checks = d.run_checks(wsl_box())
    bad = [c for c in checks if c.status != "pass"]
    assert bad == []
    assert "WSL2" in by_name(wsl_box())["platform"].detail


@pytest.mark.parametrize(
    ("proc_version", "system", "kind", "status"),
    [
        (WSL2, "Linux", "wsl2", "pass"),
        (WSL1, "Linux", "wsl1", "fail"),
        (UBUNTU, "Linux", "linux", "pass"),
        ("", "Windows", "windows", "fail"),
        ("", "Darwin", "macos", "fail"),
    ],
)
def test_platform_kinds(proc_version: str, system: str, kind: str, status: str) -> None:
    f = wsl_box(proc_version=proc_version, system=system)
    assert f.kind == kind
    check = d.check_platform(f)
    assert check.status == status
    if kind == "wsl1":
        assert "wsl --set-version" in check.hint


def test_wsl2_without_gpu_libraries_fails_with_windows_driver_fix() -> None:
    f = wsl_box(wsl_lib_dir=False, nvidia_smi=None, nvidia_smi_on_path=False, nvidia_smi_csv=None)
    check = d.check_nvidia_smi(f)
    assert check.status == "fail" and "/usr/lib/wsl/lib" in check.detail
    assert "Windows" in check.hint and "wsl --update" in check.hint


def test_nvidia_smi_off_path_in_wsl_is_a_warning() -> None:
    check = d.check_nvidia_smi(wsl_box(nvidia_smi_on_path=False))
    assert check.status == "warn" and "PATH" in check.hint


def test_nvidia_smi_failure_with_linux_driver_inside_wsl() -> None:
    dpkg = "nvidia-driver-550\tii \t550.120\nlibnvidia-compute-550:amd64\tii \t550.120\nnvidia-utils-545\trc \t545\n"
    f = wsl_box(nvidia_smi_csv=None, nvidia_smi_error=SMI_DRIVER_FAIL, dpkg=dpkg)
    smi = d.check_nvidia_smi(f)
    assert smi.status == "fail" and "couldn't communicate" in smi.detail
    assert "remove the Linux NVIDIA driver" in smi.hint
    drv = d.check_wsl_driver(f)
    assert drv.status == "fail"
    # only installed ("ii") packages are named; the removed one ("rc") is not
    assert "nvidia-driver-550" in drv.hint and "libnvidia-compute-550" in drv.hint
    assert "nvidia-utils-545" not in drv.hint


def test_shadowing_libcuda_and_stub_path_fail() -> None:
    f = wsl_box(
        libcuda_copies=("/usr/lib/x86_64-linux-gnu/libcuda.so.1",),
        env={"LD_LIBRARY_PATH": "/usr/local/cuda/lib64:/usr/local/cuda/lib64/stubs"},
    )
    check = d.check_wsl_driver(f)
    assert check.status == "fail"
    assert "libcuda.so.1" in check.detail and "stubs" in check.detail


@pytest.mark.parametrize(
    ("package", "harmful"),
    [
        ("nvidia-utils-550", True),  # its /usr/bin/nvidia-smi cannot reach the GPU inside WSL
        ("cuda-12-6", True),  # the versioned meta package pulls cuda-drivers in
        ("cuda-13-0", True),
        ("cuda", True),
        ("cuda-runtime-12-6", True),
        ("cuda-drivers-570", True),
        ("libcuda1", True),  # Debian's libcuda
        ("nvidia-smi", True),  # Debian's nvidia-smi
        ("cuda-toolkit-12-6", False),  # the toolkit alone is fine
        ("cuda-toolkit-13-0", False),
        ("nvidia-cuda-toolkit", False),
        ("python3", False),
    ],
)
def test_linux_driver_packages(package: str, harmful: bool) -> None:
    assert bool(d.LINUX_DRIVER_PACKAGES.match(package)) is harmful


def test_held_driver_packages_count_as_installed() -> None:
    f = wsl_box(dpkg="nvidia-driver-550\thi \t550\ncuda-12-6\tii \t12.6\nnvidia-utils-545\trc \t545\n")
    check = d.check_wsl_driver(f)
    assert check.status == "fail"
    assert "nvidia-driver-550" in check.hint and "cuda-12-6" in check.hint and "nvidia-utils-545" not in check.hint


def test_a_broken_nvidia_smi_before_the_working_one_is_reported() -> None:
    failures = (("/usr/bin/nvidia-smi", SMI_DRIVER_FAIL),)
    check = d.check_nvidia_smi(wsl_box(nvidia_smi_failures=failures))
    assert check.status == "fail"
    assert "/usr/bin/nvidia-smi fails" in check.detail and "/usr/lib/wsl/lib/nvidia-smi" in check.detail
    assert "apt-get remove --purge" in check.hint and "wsl --shutdown" in check.hint
    assert d.check_gpu(wsl_box(nvidia_smi_failures=failures)).status == "pass"  # the GPU itself is found
    native = d.check_nvidia_smi(
        wsl_box(proc_version=UBUNTU, nvidia_smi="/usr/local/bin/nvidia-smi", nvidia_smi_failures=failures)
    )
    assert native.status == "warn"


def test_gathering_finds_the_gpu_behind_a_broken_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for folder, body in (
        ("first", f'printf "%s\\n" "{SMI_DRIVER_FAIL}"\nexit 9'),
        ("second", f"printf '%s' '{RTX4090}'"),
    ):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "nvidia-smi").write_text("#!/bin/sh\n" + body + "\n")
        (tmp_path / folder / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'first'}:{tmp_path / 'second'}:{os.environ['PATH']}")
    monkeypatch.setattr(d, "probe_in_child", lambda deep, timeout: {})
    facts = d.gather_facts(deep=False)
    assert facts.nvidia_smi == str(tmp_path / "second" / "nvidia-smi") and facts.nvidia_smi_on_path
    assert facts.gpus[0].name == "NVIDIA GeForce RTX 4090"
    assert facts.nvidia_smi_failures[0][0] == str(tmp_path / "first" / "nvidia-smi")


@pytest.mark.parametrize(
    ("proc_version", "signs", "kind"),
    [
        ("Linux version 6.6.36-custom (me@box) #1 SMP", ("/run/WSL",), "wsl2"),  # a self-built WSL2 kernel
        ("Linux version 6.6.36-custom (me@box) #1 SMP", ("/proc/sys/fs/binfmt_misc/WSLInterop",), "wsl2"),
        ("Linux version 6.6.36-custom (me@box) #1 SMP", ("WSL_DISTRO_NAME=Ubuntu",), "wsl2"),
        ("Linux version 6.6.36-custom (me@box) #1 SMP", (), "linux"),
        (WSL1, ("WSL_DISTRO_NAME=Ubuntu", "/proc/sys/fs/binfmt_misc/WSLInterop"), "wsl1"),
        ("Linux version 4.19.104-microsoft-standard (oe-user@oe-host)", (), "wsl2"),  # an early WSL2 kernel
    ],
)
def test_wsl_is_recognised_beyond_the_kernel_name(proc_version: str, signs: tuple[str, ...], kind: str) -> None:
    f = wsl_box(proc_version=proc_version, wsl_signs=signs)
    assert f.kind == kind
    if kind == "wsl2" and signs:
        assert "custom kernel" in d.check_platform(f).detail and signs[0] in d.check_platform(f).detail


def test_wsl_signs_read_the_environment() -> None:
    assert d.wsl_signs({"WSL_DISTRO_NAME": "Ubuntu-24.04"})[0] == "WSL_DISTRO_NAME=Ubuntu-24.04"
    assert not any(s.startswith("WSL_DISTRO_NAME") for s in d.wsl_signs({}))


def test_linux_driver_check_skips_on_native_linux() -> None:
    f = wsl_box(proc_version=UBUNTU, dpkg="nvidia-driver-550\tii \t550\n")
    assert d.check_wsl_driver(f).status == "skip"


def test_cpu_only_linux_box_warns_but_does_not_fail() -> None:
    f = wsl_box(
        proc_version=UBUNTU,
        nvidia_smi=None,
        nvidia_smi_csv=None,
        runtime={
            "torch": {"version": "2.13.0+cpu", "cuda": None, "cuda_available": False},
            "bitsandbytes": {"version": "0.50"},
            "triton": {"error": "ModuleNotFoundError: No module named 'triton'"},
            "fla": {"error": "ModuleNotFoundError: No module named 'fla'"},
        },
    )
    checks = by_name(f)
    assert checks["nvidia-smi"].status == "warn" and "CPU only" in checks["nvidia-smi"].detail
    assert checks["torch"].status == "pass" and "CPU only" in checks["torch"].detail
    assert checks["Triton"].status == "skip" and checks["flash-linear-attention"].status == "skip"
    assert not any(c.status == "fail" for c in checks.values())


def test_parse_nvidia_smi_with_and_without_compute_cap() -> None:
    (g,) = d.parse_nvidia_smi(RTX5090)
    assert (g.name, g.compute_cap, g.memory_total_mib, g.driver_major) == (
        "NVIDIA GeForce RTX 5090",
        (12, 0),
        32607,
        576,
    )
    (old,) = d.parse_nvidia_smi(OLD_SMI)
    assert old.compute_cap is None and old.memory_total_mib == 15360 and old.driver_version == "470.82.01"
    two = d.parse_nvidia_smi(RTX4090 + "1, NVIDIA RTX A4000, 8.6, 16376, 0, 566.36\n")
    assert [x.index for x in two] == [0, 1]


def test_gpu_check_reports_name_capability_and_vram() -> None:
    check = d.check_gpu(wsl_box(nvidia_smi_csv=RTX3060))
    assert check.status == "pass"
    assert "RTX 3060" in check.detail and "8.6" in check.detail and "12.0 GiB" in check.detail


def test_gpu_smaller_than_the_plan_warns_and_points_at_plan() -> None:
    f = wsl_box(nvidia_smi_csv=RTX3060, needs=Needs(preset="rwkv7-7.2b", vram_gib=20.0))
    check = d.check_gpu(f)
    assert check.status == "warn" and "rwkv1c plan --model rwkv7-7.2b --vram 12" in check.hint


def test_pascal_card_is_a_warning_about_cu126_and_bf16() -> None:
    f = wsl_box(nvidia_smi_csv=GTX1080)
    assert d.check_gpu(f).status == "warn"
    assert d.check_bf16(f).status == "warn"
    assert nvidia.choose_torch("2.13.0", f.gpus).spec == "torch==2.13.0+cu126"


def test_torch_cpu_build_on_a_gpu_box_fails() -> None:
    f = wsl_box(runtime=rt(torch={"version": "2.13.0+cpu", "cuda": None, "cuda_available": False}))
    check = d.check_torch(f)
    assert check.status == "fail" and "CPU-only" in check.detail and "bootstrap.sh" in check.hint


def test_rtx5090_with_a_build_lacking_sm120_fails_with_cu130_index() -> None:
    old_build = {
        **TORCH_OK,
        "version": "2.6.0+cu124",
        "cuda": "12.4",
        "arch_list": ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"],
    }
    f = wsl_box(nvidia_smi_csv=RTX5090.replace("576.80", "581.57"), runtime=rt(torch=old_build))
    check = d.check_torch(f)
    assert check.status == "fail" and "12.0" in check.detail
    assert "whl/cu130" in check.hint and "torch==2.13.0+cu130" in check.hint  # what bootstrap installs by default
    # on a 576 driver no torch 2.13 build runs a Blackwell card: the fix is the driver (or an older torch)
    old_driver = d.check_torch(replace(f, nvidia_smi_csv=RTX5090))
    assert "580 or newer" in old_driver.hint and "TORCH_VERSION=2.11.0" in old_driver.hint


def test_cuda13_build_with_a_pre_580_driver_fails() -> None:
    cu130 = {**TORCH_OK, "cuda": "13.0", "version": "2.13.0+cu130"}
    f = wsl_box(nvidia_smi_csv=RTX4090, runtime=rt(torch=cu130))
    check = d.check_torch(f)
    assert check.status == "fail" and "580" in check.detail
    assert "Windows" in check.hint and "cu126" in check.hint
    ok = wsl_box(runtime=rt(torch={**TORCH_OK, "cuda": "12.6", "version": "2.11.0+cu126"}))
    assert d.check_torch(ok).status == "pass"


def test_cuda_unavailable_carries_the_init_error_and_a_hint() -> None:
    bad = {
        **TORCH_OK,
        "cuda": "12.6",
        "cuda_available": False,
        "cuda_error": "RuntimeError: Found no NVIDIA driver on your system.",
    }
    check = d.check_torch(wsl_box(runtime=rt(torch=bad)))
    assert check.status == "fail" and "Found no NVIDIA driver" in check.detail and "Windows" in check.hint


def test_hidden_gpus_are_named() -> None:
    off = {**TORCH_OK, "cuda_available": False}
    check = d.check_torch(wsl_box(runtime=rt(torch=off), env={"CUDA_VISIBLE_DEVICES": ""}))
    assert check.status == "fail" and "CUDA_VISIBLE_DEVICES" in check.detail and "unset" in check.hint


@pytest.mark.parametrize(
    ("cap", "arch", "ok"),
    [
        ((8, 9), ["sm_80", "sm_86", "sm_90"], True),  # sm_86 cubin runs on 8.9
        ((12, 0), ["sm_80", "sm_86", "sm_90", "sm_100"], False),  # sm_100 is another major
        ((12, 0), ["sm_90", "compute_90"], True),  # PTX is JIT-compiled forward
        ((9, 0), ["sm_80", "sm_90a"], True),
        ((10, 3), ["sm_100a"], False),  # "a" cubins run only on their exact chip
        ((10, 3), ["sm_100"], True),
        ((8, 6), ["sm_90"], False),
    ],
)
def test_arch_supported(cap: tuple[int, int], arch: list[str], ok: bool) -> None:
    assert d.arch_supported(cap, arch) is ok


def test_bitsandbytes_op_failure_fails_with_hint() -> None:
    bnb = {
        "version": "0.45.0",
        "op": "RuntimeError: The installed version of bitsandbytes was compiled without GPU support.",
    }
    check = d.check_bitsandbytes(wsl_box(runtime=rt(bitsandbytes=bnb)))
    assert check.status == "fail" and "QLoRA" in check.hint


def test_triton_without_c_compiler() -> None:
    tri = {
        "version": "3.6.0",
        "op": "RuntimeError: Failed to find C compiler. Please specify via CC environment variable.",
    }
    check = d.check_triton(wsl_box(runtime=rt(triton=tri)))
    assert check.status == "fail" and "build-essential" in check.hint


def test_probe_timeout_is_reported() -> None:
    f = wsl_box(runtime={"torch": TORCH_OK, "probe_error": "probe did not finish within 300 s (a CUDA call hung?)"})
    check = d.check_fla(f)
    assert check.status == "fail" and "did not finish" in check.detail


def test_wsl_ram_below_need_gives_wslconfig_advice() -> None:
    f = wsl_box(
        meminfo_kib={"MemTotal": 15 * GIB_KIB, "MemAvailable": 14 * GIB_KIB, "SwapTotal": 0},
        needs=Needs(preset="rwkv7-7.2b", host_ram_gib=15.4),
        wslconfig={"/mnt/c/Users/me/.wslconfig": "[wsl2]\nmemory=16GB # half\nswap=0\n"},
    )
    check = d.check_ram(f)
    assert check.status == "fail"
    assert "memory=16GB" in check.detail and "swap=0" in check.detail
    assert "[wsl2]" in check.hint and "memory=20GB" in check.hint and "wsl --shutdown" in check.hint
    with_swap = replace(f, meminfo_kib={**f.meminfo_kib, "SwapTotal": 8 * GIB_KIB})
    assert d.check_ram(with_swap).status == "warn"


@pytest.mark.parametrize(
    ("paths", "status"),
    [
        ({"workspace": "/home/me/rwkv1c", "data": "/home/me/rwkv1c/data"}, "pass"),
        ({"workspace": "/mnt/c/Users/me/rwkv1c"}, "warn"),
        ({"workspace": "/home/me/rwkv1c", "data": "/mnt/d/datasets/1c"}, "warn"),
        ({"workspace": "/home/me/rwkv1c", "models": "/win/models"}, "warn"),  # a 9p mount elsewhere
    ],
)
def test_windows_drive_paths(paths: dict[str, str], status: str) -> None:
    f = wsl_box(paths=paths, mounts=(("/", "ext4"), ("/mnt/c", "9p"), ("/mnt/d", "9p"), ("/win", "drvfs")))
    check = d.check_paths(f)
    assert check.status == status
    if status == "warn":
        assert "\\\\wsl$" in check.hint


def test_mnt_paths_are_fine_on_native_linux() -> None:
    f = wsl_box(proc_version=UBUNTU, paths={"workspace": "/mnt/c/data"})
    assert d.check_paths(f).status == "skip"


def test_disk_needs_room_for_the_checkpoint() -> None:
    small = wsl_box(disk_free={"models": 4 * 2**30}, needs=Needs(checkpoint_bytes=5.9e9))
    assert d.check_disk(small).status == "fail"
    present = replace(
        small, needs=Needs(checkpoint_bytes=5.9e9, checkpoint_present=True), disk_free={"models": 8 * 2**30}
    )
    assert d.check_disk(present).status == "warn"
    assert d.check_disk(wsl_box()).status == "pass"


def test_python_version() -> None:
    assert d.check_python(wsl_box(python=(3, 9, 18))).status == "fail"
    assert d.check_python(wsl_box(python=(3, 12, 3))).status == "pass"


def test_parse_wslconfig_reads_only_the_wsl2_section() -> None:
    text = "[experimental]\nmemory=1GB\n[wsl2]\nMemory = 24GB  # comment\nswap=8GB\n"
    assert d.parse_wslconfig(text) == {"memory": "24GB", "swap": "8GB"}


def test_doctor_exit_code_and_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(d, "gather_facts", lambda **kw: wsl_box(proc_version=WSL1))
    assert doctor_verb(json=True) == 1
    out = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in out["checks"]]
    assert names[0] == "platform" and set(out["checks"][0]) == {"name", "status", "detail", "hint"}
    assert out["checks"][0]["status"] == "fail"
    monkeypatch.setattr(d, "gather_facts", lambda **kw: wsl_box())
    assert doctor_verb() == 0
    table = capsys.readouterr().out
    assert "PASS  platform" in table and "0 failed" in table


def test_format_shows_fix_under_problems() -> None:
    text = d.format_checks(
        [d.Check("a", "fail", "broken", "do this\nthen that"), d.Check("b", "pass", "fine", "unused")]
    )
    lines = text.splitlines()
    assert lines[0].startswith("FAIL  a") and "fix: do this" in lines[1] and "then that" in lines[2]
    assert "unused" not in text


def test_doctor_runs_for_real_here(capsys: pytest.CaptureFixture[str]) -> None:
    """The real gathering (child-process probe included) on this machine: every check reports a valid status."""
    code = doctor_verb(json=True)
    out = json.loads(capsys.readouterr().out)
    statuses = {c["name"]: c["status"] for c in out["checks"]}
    assert set(statuses.values()) <= {"pass", "warn", "fail", "skip"}
    assert statuses["torch"] in ("pass", "fail") and statuses["Python"] == "pass"
    assert code == (1 if "fail" in statuses.values() else 0)


def test_a_mistyped_profile_flag_names_the_choices_and_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(d, "probe_in_child", lambda deep, timeout: {})
    facts = d.gather_facts(model=None, profile="qlora-nf5", deep=False)
    check = by_name(facts)["settings"]
    assert check.status == "fail"
    assert "qlora-nf5" in check.detail and "qlora-nf4" in check.detail
    assert "--profile" in (check.hint or "")


def test_doctor_checks_the_folders_download_and_train_write_to(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run outside the workspace, relative MODELS_DIR / RUNS_DIR mean the current folder, for every command."""
    from rwkv1c.config import load_workspace, workspace_root

    monkeypatch.setattr(d, "probe_in_child", lambda deep, timeout: {})
    monkeypatch.chdir(tmp_path)
    ws = load_workspace(workspace_root())
    facts = d.gather_facts(model=None, profile=None, deep=False)
    assert facts.paths["models"] == str((tmp_path / ws.models_dir).resolve())
    assert facts.paths["runs"] == str((tmp_path / ws.runs_dir).resolve())
