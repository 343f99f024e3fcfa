"""scripts/bootstrap.sh and the decisions it takes from rwkv1c.machine.nvidia.

The script runs for real in a copy of the checkout, with stand-ins on PATH: a `python3` whose `-m venv` makes a
fake .venv (its `-m pip` only records the call), and `nvidia-smi` scripts that print a GPU or fail. Nothing is
installed. The choice of torch build is checked against a hand-written table of every torch release x driver x
card, transcribed from PyTorch's release matrix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rwkv1c.config import Workspace, load_workspace, read_env_file
from rwkv1c.errors import UserError
from rwkv1c.machine import nvidia
from rwkv1c.machine.memory import detect_vram_gib
from rwkv1c.machine.nvidia import Gpu, choose_torch, gpu_constraints, query_gpus, smi_candidates

REPO = Path(__file__).resolve().parents[1]
HEADER = "index, name, compute_cap, memory.total [MiB], memory.used [MiB], driver_version"
RTX4090_580 = HEADER + "\n0, NVIDIA GeForce RTX 4090, 8.9, 24564, 1536, 581.57\n"
RTX5090_576 = HEADER + "\n0, NVIDIA GeForce RTX 5090, 12.0, 32607, 1200, 576.80\n"
GTX1080_560 = HEADER + "\n0, NVIDIA GeForce GTX 1080 Ti, 6.1, 11264, 200, 560.94\n"
DRIVER_FAIL = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest "
    "NVIDIA driver is installed and running."
)
WSL_SMI_HERE = Path(nvidia.WSL_LIB, "nvidia-smi").exists()
no_wsl_gpu = pytest.mark.skipif(WSL_SMI_HERE, reason="this machine's own WSL nvidia-smi would be found")


# ---------------------------------------------------------------------------------------------- the choice table

CARDS = {"pascal": (6, 1), "volta": (7, 0), "turing": (7, 5), "ampere": (8, 6), "blackwell": (12, 0)}

# Which build bootstrap installs for each torch release, driver and card ("-": none can run, stop with the fix).
# 470 predates CUDA 12 (525+), 560 predates CUDA 13 (580+). Pascal/Volta leave CUDA 13 (and cu128 from 2.11),
# Blackwell needs 12.8+, 2.12-2.14 ship cu126/cu130/cu132 and 2.15 drops cu126.
AUTO_TABLE = """
torch   driver  pascal  volta  turing  ampere  blackwell
2.7.1   470     cu118   cu118  cu118   cu118   -
2.7.1   560     cu126   cu126  cu126   cu126   cu128
2.7.1   580     cu126   cu126  cu126   cu126   cu128
2.8.0   470     -       -      -       -       -
2.8.0   560     cu126   cu128  cu128   cu128   cu128
2.8.0   580     cu126   cu128  cu128   cu128   cu128
2.9.1   470     -       -      -       -       -
2.9.1   560     cu126   cu128  cu128   cu128   cu128
2.9.1   580     cu126   cu128  cu128   cu128   cu128
2.10.0  470     -       -      -       -       -
2.10.0  560     cu126   cu128  cu128   cu128   cu128
2.10.0  580     cu126   cu128  cu128   cu128   cu128
2.11.0  470     -       -      -       -       -
2.11.0  560     cu126   cu126  cu128   cu128   cu128
2.11.0  580     cu126   cu126  cu130   cu130   cu130
2.12.1  470     -       -      -       -       -
2.12.1  560     cu126   cu126  cu126   cu126   -
2.12.1  580     cu126   cu126  cu130   cu130   cu130
2.13.0  470     -       -      -       -       -
2.13.0  560     cu126   cu126  cu126   cu126   -
2.13.0  580     cu126   cu126  cu130   cu130   cu130
2.14.1  470     -       -      -       -       -
2.14.1  560     cu126   cu126  cu126   cu126   -
2.14.1  580     cu126   cu126  cu130   cu130   cu130
2.15.0  470     -       -      -       -       -
2.15.0  560     -       -      -       -       -
2.15.0  580     -       -      cu132   cu132   cu132
"""


def _auto_cases() -> list[tuple[str, int, str, str]]:
    lines = [ln.split() for ln in AUTO_TABLE.strip().splitlines()]
    cards = lines[0][2:]
    return [(row[0], int(row[1]), card, want) for row in lines[1:] for card, want in zip(cards, row[2:], strict=True)]


def gpu(cap: tuple[int, int] | None, driver: str, name: str = "card") -> Gpu:
    return Gpu(0, name, cap, 12288, 0, driver)


@pytest.mark.parametrize(("version", "driver", "card", "want"), _auto_cases())
def test_auto_choice_for_every_release_driver_and_card(version: str, driver: int, card: str, want: str) -> None:
    g = gpu(CARDS[card], f"{driver}.10")
    if want == "-":
        with pytest.raises(UserError) as info:
            choose_torch(version, [g])
        # the fix is a newer driver, another TORCH_VERSION, or the CPU build; never silence
        assert info.value.hint and any(w in info.value.hint for w in ("driver", "TORCH_VERSION=", "CPU build"))
        return
    choice = choose_torch(version, [g])
    assert (choice.spec, choice.index_url, choice.cuda) == (
        f"torch=={version}+{want}",
        f"https://download.pytorch.org/whl/{want}",
        True,
    )


# Which builds each release publishes, and the driver each CUDA version needs: transcribed separately from
# rwkv1c.machine.nvidia's table, so that a slip in one shows up against the other.
PUBLISHED = {
    "2.7.1": "cpu cu118 cu126 cu128",
    "2.8.0": "cpu cu126 cu128 cu129",
    "2.9.1": "cpu cu126 cu128 cu130",
    "2.10.0": "cpu cu126 cu128 cu130",
    "2.11.0": "cpu cu126 cu128 cu130",
    "2.12.1": "cpu cu126 cu130 cu132",
    "2.13.0": "cpu cu126 cu130 cu132",
    "2.14.1": "cpu cu126 cu130 cu132",
    "2.15.0": "cpu cu130 cu132",
}
DRIVER_NEED = {"cpu": 0, "cu118": 450, "cu126": 525, "cu128": 525, "cu129": 525, "cu130": 580, "cu132": 580}


@pytest.mark.parametrize("driver", [470, 560, 580])
@pytest.mark.parametrize("tag", list(DRIVER_NEED))
@pytest.mark.parametrize("version", list(PUBLISHED))
def test_every_index_driver_and_release(version: str, tag: str, driver: int) -> None:
    """TORCH_INDEX_URL set by hand on an RTX 3060 (every CUDA build has its code): a build that does not exist
    for the release, or needs a newer driver, stops with the fix instead of installing."""
    url = f"https://download.pytorch.org/whl/{tag}"
    g = gpu((8, 6), f"{driver}.10")
    if tag not in PUBLISHED[version].split():
        with pytest.raises(UserError, match=f"has no {tag} build"):
            choose_torch(version, [g], url)
    elif driver < DRIVER_NEED[tag]:
        with pytest.raises(UserError, match=f"driver {DRIVER_NEED[tag]} or newer") as info:
            choose_torch(version, [g], url)
        assert f"to {DRIVER_NEED[tag]} or newer" in (info.value.hint or "")
    else:
        choice = choose_torch(version, [g], url)
        assert (choice.spec, choice.index_url, choice.cuda) == (f"torch=={version}+{tag}", url, tag != "cpu")


@pytest.mark.parametrize(
    ("version", "tag", "cap", "runs"),
    [
        ("2.13.0", "cu126", (12, 0), False),  # no Blackwell code in 12.6 builds
        ("2.13.0", "cu130", (6, 1), False),  # CUDA 13 has no Pascal
        ("2.13.0", "cu130", (7, 0), False),  # ... nor Volta
        ("2.11.0", "cu128", (7, 0), False),  # 2.11 dropped Volta from cu128
        ("2.10.0", "cu128", (7, 0), True),
        ("2.7.1", "cu128", (7, 0), False),  # 2.7's cu128 starts at Turing
        ("2.7.1", "cu118", (3, 7), True),
        ("2.14.1", "cu126", (5, 2), True),  # Maxwell, the last release with it
    ],
)
def test_explicit_build_without_code_for_the_card_stops(
    version: str, tag: str, cap: tuple[int, int], runs: bool
) -> None:
    url = f"https://download.pytorch.org/whl/{tag}"
    if runs:
        assert choose_torch(version, [gpu(cap, "580.10")], url).spec == f"torch=={version}+{tag}"
    else:
        with pytest.raises(UserError, match="has no code for compute capability"):
            choose_torch(version, [gpu(cap, "580.10")], url)


@pytest.mark.parametrize("version", list(PUBLISHED))
def test_no_gpu_takes_the_cpu_build_from_its_index(version: str) -> None:
    choice = choose_torch(version, [])
    assert (choice.spec, choice.index_url, choice.cuda) == (
        f"torch=={version}+cpu",
        "https://download.pytorch.org/whl/cpu",
        False,
    )


def test_stops_name_the_right_fix() -> None:
    with pytest.raises(UserError) as info:  # RTX 5090 on a 576 driver: cu130 needs 580, cu126 lacks Blackwell
        choose_torch("2.13.0", [gpu((12, 0), "576.80")], wsl=True)
    assert "580 or newer" in (info.value.hint or "") and "on Windows" in (info.value.hint or "")
    assert "TORCH_VERSION=2.11.0" in (info.value.hint or "")  # cu128 of 2.11 runs Blackwell on 525+
    with pytest.raises(UserError) as info:  # Pascal has no build in 2.15: go back to the last release with cu126
        choose_torch("2.15.0", [gpu((6, 1), "581.10")])
    assert "TORCH_VERSION=2.14.1" in (info.value.hint or "") and "update the NVIDIA driver" not in (
        info.value.hint or ""
    )
    with pytest.raises(UserError) as info:  # a hand-set cu130 on a 566 driver: update, or let bootstrap choose
        choose_torch("2.13.0", [gpu((8, 9), "566.36")], "https://download.pytorch.org/whl/cu130")
    assert "580 or newer" in (info.value.hint or "") and "installs the cu126 build" in (info.value.hint or "")
    with pytest.raises(UserError, match="not known here"):  # a release the table does not know, with a GPU
        choose_torch("2.16.0", [gpu((8, 6), "590.10")])
    with pytest.raises(UserError, match="not a release number"):
        choose_torch("2.13.0 # comment", [])


def test_unknown_compute_capability_takes_the_build_for_the_oldest_cards() -> None:
    old_smi = gpu(None, "535.10")  # an nvidia-smi too old to report compute_cap
    assert choose_torch("2.13.0", [old_smi]).spec == "torch==2.13.0+cu126"


def test_every_listed_gpu_must_be_served() -> None:
    """A Pascal card next to an Ampere one: the build has to run on both."""
    mixed = [gpu((8, 6), "581.10"), Gpu(1, "old", (6, 1), 11264, 0, "581.10")]
    assert choose_torch("2.13.0", mixed).spec == "torch==2.13.0+cu126"


def test_plain_pypi_and_custom_indexes() -> None:
    pypi = choose_torch("2.13.0", [gpu((8, 6), "581.10")], "")
    assert (pypi.spec, pypi.index_url, pypi.cuda) == ("torch==2.13.0", "", True)
    with pytest.raises(UserError, match="580"):  # PyPI's 2.13 wheel is the CUDA 13.0 build
        choose_torch("2.13.0", [gpu((8, 6), "566.10")], "")
    mirror = choose_torch("2.13.0", [gpu((8, 6), "566.10")], "https://mirror.example/torch/simple")
    assert (mirror.spec, mirror.index_url) == ("torch==2.13.0", "https://mirror.example/torch/simple")


def test_gpu_constraints_only_for_the_torch_they_were_tested_with(tmp_path: Path) -> None:
    real = REPO / "constraints-gpu.txt"
    assert gpu_constraints(nvidia.TESTED_TORCH, real) == ("constraints-gpu.txt", "")
    name, note = gpu_constraints("2.14.1", real)
    assert name == "" and "not 2.14.1" in note
    assert gpu_constraints("2.13.0", tmp_path / "absent.txt")[0] == ""


def test_constraints_gpu_pins_match_the_tested_torch() -> None:
    """fla-core 0.6.0 (the tested wkv call) and the triton torch 2.13.0's CUDA wheels require (3.7.1)."""
    lines = [ln for ln in (REPO / "constraints-gpu.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert f"torch=={nvidia.TESTED_TORCH}" in lines
    assert "fla-core==0.6.0" in lines and "triton==3.7.1" in lines
    # the torch bootstrap installs by default is the one these pins were tested with
    assert Workspace().torch_version == nvidia.TESTED_TORCH
    assert read_env_file(REPO / "configs" / "workspace.env.example")["TORCH_VERSION"] == nvidia.TESTED_TORCH


# ---------------------------------------------------------------------------------------------- nvidia-smi


def smi_script(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(0o755)
    return exe


def working_smi(folder: Path, csv_text: str) -> Path:
    return smi_script(folder, f"printf '%s\\n' '{csv_text.rstrip()}'")  # builtins only: PATH may lack /bin


def broken_smi(folder: Path) -> Path:
    return smi_script(folder, f'printf "%s\\n" "{DRIVER_FAIL}"\nexit 9')


def test_a_broken_nvidia_smi_first_on_path_does_not_hide_the_working_one(tmp_path: Path) -> None:
    bad = broken_smi(tmp_path / "usr-bin")
    wsl = working_smi(tmp_path / "wsl-lib", RTX4090_580)
    candidates = smi_candidates(str(tmp_path / "usr-bin"), wsl_lib=str(tmp_path / "wsl-lib"))
    assert candidates == [str(bad), str(wsl)]
    result = query_gpus(candidates, path=str(tmp_path / "usr-bin"))
    assert result.exe == str(wsl) and not result.on_path
    assert result.failures == ((str(bad), DRIVER_FAIL),)
    assert result.gpus[0].name == "NVIDIA GeForce RTX 4090"


def test_the_same_nvidia_smi_twice_on_path_is_asked_once(tmp_path: Path) -> None:
    exe = working_smi(tmp_path / "a", RTX4090_580)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "nvidia-smi").symlink_to(exe)
    path = os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")])
    assert smi_candidates(path, wsl_lib=str(tmp_path / "none")) == [str(exe)]


def test_an_old_nvidia_smi_is_asked_again_without_compute_cap(tmp_path: Path) -> None:
    body = (
        'case "$1" in *compute_cap*) echo \'Field "compute_cap" is not a valid field to query.\'; exit 2;; esac\n'
        "echo 'index, name, memory.total [MiB], memory.used [MiB], driver_version'\n"
        "echo '0, Tesla T4, 15360, 0, 470.82.01'"
    )
    exe = smi_script(tmp_path / "old", body)
    (g,) = query_gpus([str(exe)], path="").gpus
    assert g.compute_cap is None and g.driver_version == "470.82.01"


def test_detect_vram_skips_a_broken_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken_smi(tmp_path / "first")
    working_smi(tmp_path / "second", RTX4090_580)
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "first"), str(tmp_path / "second")]))
    assert detect_vram_gib() == pytest.approx(24564 / 1024)


# ---------------------------------------------------------------------------------------------- the script


TOOLS = ("bash", "sh", "sed", "cat", "sha256sum", "cut", "rm", "mkdir", "dirname", "chmod", "cp", "env")


class Checkout:
    """A copy of the files bootstrap.sh reads, with stand-in python3 / nvidia-smi and a log of pip's calls."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for name in ("pyproject.toml", "constraints.txt", "constraints-gpu.txt"):
            shutil.copy(REPO / name, root / name)
        (root / "scripts").mkdir()
        shutil.copy(REPO / "scripts" / "bootstrap.sh", root / "scripts" / "bootstrap.sh")
        shutil.copytree(REPO / "configs", root / "configs", ignore=shutil.ignore_patterns("workspace.env"))
        (root / "src").symlink_to(REPO / "src")
        self.tools = root / "tools"
        self.tools.mkdir()
        for tool in TOOLS:
            found = shutil.which(tool)
            assert found, tool
            (self.tools / tool).symlink_to(found)
        self.pip_log = root / "pip.log"
        self.fakebin = root / "fakebin"
        self.fakebin.mkdir()
        self.venv_python = root / "venv-python"
        self.write_venv_python(pip_works=True)
        self.write_python3(venv_fails=False)

    def write_venv_python(self, *, pip_works: bool, version_ok: bool = True) -> None:
        """The stand-in for .venv/bin/python: `-m pip ...` is recorded, the rest runs the real interpreter."""
        pip = (
            f'printf "%s\\n" "$*" >> "{self.pip_log}"; exit 0'
            if pip_works
            else "echo 'No module named pip' >&2; exit 1"
        )
        old = "" if version_ok else 'case "$*" in *version_info*) echo 3.9.18; exit 1;; esac\n'
        self.venv_python.write_text(
            f'#!/bin/sh\n{old}if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then shift 2; {pip}; fi\n'
            f'exec "{sys.executable}" "$@"\n'
        )
        self.venv_python.chmod(0o755)

    def write_python3(self, *, venv_fails: bool) -> None:
        """The stand-in for the system python3: `-m venv DIR` copies the venv stand-in (or, as Debian without
        python3-venv does, writes bin/python and then fails at ensurepip)."""
        make = f'mkdir -p "$3/bin" && cp "{self.venv_python}" "$3/bin/python"'
        fail = (
            "echo 'The virtual environment was not created successfully because ensurepip is not available.'; exit 1"
            if venv_fails
            else "exit 0"
        )
        script = self.fakebin / "python3"
        script.write_text(
            f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "venv" ]; then {make}; {fail}; fi\n'
            f'exec "{sys.executable}" "$@"\n'
        )
        script.chmod(0o755)

    def settings(self, text: str, *, newline: str = "\n", bom: bool = False) -> Path:
        path = self.root / "configs" / "workspace.env"
        path.write_bytes(("\ufeff" if bom else "").encode() + text.replace("\n", newline).encode("utf-8"))
        return path

    def run(self, *args: str, smi_dirs: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
        path = os.pathsep.join([str(self.fakebin), *map(str, smi_dirs), str(self.tools)])
        env = {"PATH": path, "HOME": str(self.root), "LANG": "C.UTF-8"}
        return subprocess.run(
            [str(self.tools / "bash"), "scripts/bootstrap.sh", *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def installs(self) -> list[str]:
        if not self.pip_log.exists():
            return []
        return [
            ln for ln in self.pip_log.read_text().splitlines() if ln.startswith("--disable-pip-version-check install")
        ]


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    return Checkout(tmp_path)


@no_wsl_gpu
def test_no_gpu_installs_the_cpu_build_from_the_cpu_index(checkout: Checkout) -> None:
    done = checkout.run("--dev")
    assert done.returncode == 0, done.stderr
    wheel_call, deps_call, package_call = checkout.installs()
    # the wheel from the CPU index (an extra one: pip's own index stays), its dependencies from pip's own index
    assert wheel_call.endswith(
        "install --no-deps --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu"
    )
    assert deps_call.endswith("install -c constraints.txt torch==2.13.0+cpu")
    assert package_call.endswith("install -q -c constraints.txt -e .[dev]")  # no GPU extra without a GPU
    assert "about 200 MB" in done.stdout
    again = checkout.run("--dev")  # nothing changed: nothing to install
    assert again.returncode == 0 and "up to date" in again.stdout and len(checkout.installs()) == 3


def test_gpu_machine_gets_the_cuda_build_and_the_gpu_extra(checkout: Checkout, tmp_path: Path) -> None:
    working_smi(tmp_path / "smi", RTX4090_580)
    done = checkout.run(smi_dirs=(tmp_path / "smi",))
    assert done.returncode == 0, done.stderr
    wheel_call, deps_call, package_call = checkout.installs()
    assert wheel_call.endswith("--extra-index-url https://download.pytorch.org/whl/cu130 torch==2.13.0+cu130")
    assert " -q " not in wheel_call + deps_call  # the big downloads show pip's progress
    assert package_call.endswith("install -q -c constraints.txt -c constraints-gpu.txt -e .[gpu]")
    assert "about 3 GB" in done.stdout


def test_a_broken_nvidia_smi_first_on_path_still_finds_the_gpu(checkout: Checkout, tmp_path: Path) -> None:
    broken_smi(tmp_path / "usr-bin")
    working_smi(tmp_path / "wsl-lib", RTX4090_580)
    done = checkout.run(smi_dirs=(tmp_path / "usr-bin", tmp_path / "wsl-lib"))
    assert done.returncode == 0, done.stderr
    assert checkout.installs()[0].endswith("torch==2.13.0+cu130")
    assert f"{tmp_path / 'usr-bin' / 'nvidia-smi'} fails" in done.stderr and "rwkv1c doctor" in done.stderr


TRICKY = """# saved by Notepad through \\\\wsl$
TORCH_VERSION="2.12.1"   # the last one tested on this box
export TORCH_INDEX_URL='https://download.pytorch.org/whl/cu126' # legacy card
MODELS_DIR = /data/models # a trailing comment
RUNS_DIR=runs#2
"""


def test_crlf_quotes_and_comments_read_the_same_in_the_script_and_in_python(checkout: Checkout, tmp_path: Path) -> None:
    settings = checkout.settings(TRICKY, newline="\r\n", bom=True)
    ws = load_workspace(checkout.root)
    assert (ws.torch_version, ws.torch_index_url) == ("2.12.1", "https://download.pytorch.org/whl/cu126")
    assert (str(ws.models_dir), str(ws.runs_dir)) == ("/data/models", "runs#2")
    assert read_env_file(settings)["TORCH_VERSION"] == "2.12.1"
    working_smi(tmp_path / "smi", GTX1080_560)
    done = checkout.run(smi_dirs=(tmp_path / "smi",))
    assert done.returncode == 0, done.stderr
    assert checkout.installs()[0].endswith(
        "--extra-index-url https://download.pytorch.org/whl/cu126 torch==2.12.1+cu126"
    )


def test_a_malformed_settings_line_stops_before_installing(checkout: Checkout) -> None:
    checkout.settings('TORCH_VERSION="2.13.0\n')
    done = checkout.run()
    assert done.returncode != 0 and "TORCH_VERSION" in done.stderr and "quote" in done.stderr
    assert checkout.installs() == []


@pytest.mark.parametrize(
    ("smi", "settings", "message"),
    [
        (RTX5090_576, "", "580 or newer"),  # Blackwell needs CUDA 12.8+; torch 2.13's is 13.0, driver 580+
        (GTX1080_560, "TORCH_VERSION=2.15.0\n", "TORCH_VERSION=2.14.1"),  # 2.15 has no Pascal build
        (RTX4090_580.replace("581.57", "566.36"), "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130\n", "580"),
    ],
)
def test_no_build_for_this_card_and_driver_stops_with_the_fix(
    checkout: Checkout, tmp_path: Path, smi: str, settings: str, message: str
) -> None:
    checkout.settings(settings)
    working_smi(tmp_path / "smi", smi)
    done = checkout.run(smi_dirs=(tmp_path / "smi",))
    assert done.returncode == 1
    assert "fix:" in done.stderr and message in done.stderr
    assert checkout.installs() == []  # stopped before pip


def _sentinels(root: Path) -> list[Path]:
    paths = [root / "models" / "base" / "keep.pth", root / "runs" / "r" / "metrics.jsonl", root / "notes.txt"]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("mine")
    return paths


@no_wsl_gpu
@pytest.mark.parametrize("kind", ["no pip", "python 3.9", "no python", "dangling link"])
def test_an_unusable_venv_is_made_again_and_nothing_else_is_touched(checkout: Checkout, kind: str) -> None:
    venv = checkout.root / ".venv"
    if kind == "dangling link":
        venv.symlink_to(checkout.root / "gone")
    else:
        (venv / "bin").mkdir(parents=True)
        (venv / "leftover").write_text("half-made")
    if kind in ("no pip", "python 3.9"):
        checkout.write_venv_python(pip_works=False, version_ok=kind != "python 3.9")
        shutil.copy(checkout.venv_python, venv / "bin" / "python")
        checkout.write_venv_python(pip_works=True)  # the one a fresh `venv` makes
    mine = _sentinels(checkout.root)
    done = checkout.run()
    assert done.returncode == 0, done.stderr
    assert ".venv cannot be used" in done.stderr and "Removing .venv (nothing else)" in done.stderr
    assert not (venv / "leftover").exists() and not venv.is_symlink()
    assert len(checkout.installs()) == 3
    assert all(p.read_text() == "mine" for p in mine)


@no_wsl_gpu
def test_a_failed_venv_creation_leaves_no_half_made_venv(checkout: Checkout) -> None:
    checkout.write_python3(venv_fails=True)
    done = checkout.run()
    assert done.returncode == 1
    assert "python3-venv" in done.stderr
    assert not (checkout.root / ".venv").exists()  # the next run starts clean
    checkout.write_python3(venv_fails=False)  # the user installed python3-venv
    assert checkout.run().returncode == 0


def test_bootstrap_script_is_clean_bash() -> None:
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "bootstrap.sh")], check=False).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed here")
    scripts = [REPO / "scripts" / n for n in ("bootstrap.sh", "quickstart.sh", "test.sh")]
    lint = subprocess.run(
        ["shellcheck", "-x", *map(str, scripts), str(REPO / "scripts" / "lib" / "compose.sh")],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert lint.returncode == 0, lint.stdout
