"""scripts/quickstart.sh's choice of base checkpoint (scripts/lib/compose.sh), in a workspace with its own
MODELS_DIR: the preset's file first, never the quickstart's own tiny model, whatever sorts first by name."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rwkv1c.config import load_preset

REPO = Path(__file__).resolve().parents[1]


def compose(function: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run one scripts/lib/compose.sh function from ``cwd`` (a workspace), with this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        ["bash", "-c", f'source "{REPO}/scripts/lib/compose.sh" && {function}'],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace whose MODELS_DIR lies outside it, holding the tiny model, the preset's file and two others."""
    root = tmp_path / "ws"
    shutil.copytree(REPO / "configs", root / "configs", ignore=shutil.ignore_patterns("workspace.env"))
    models = tmp_path / "elsewhere" / "models"
    models.mkdir(parents=True)
    (root / "configs" / "workspace.env").write_text(f"MODEL_PRESET=rwkv7-0.1b\r\nMODELS_DIR={models}  # mine\r\n")
    (models / "quickstart-tiny.pth").write_bytes(b"x")  # sorts first by name and is the smallest
    (models / "A-small.pth").write_bytes(b"x" * 10)
    (models / "B-large.pth").write_bytes(b"x" * 100)
    (models / load_preset("rwkv7-0.1b", root).checkpoint).write_bytes(b"x" * 1000)
    return root, models


def test_the_presets_checkpoint_comes_first(workspace: tuple[Path, Path]) -> None:
    root, models = workspace
    found = compose("rwkv1c_real_base", root)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(models / load_preset("rwkv7-0.1b", root).checkpoint)
    assert compose("rwkv1c_models_dir", root).stdout.strip() == str(models)


def test_without_the_presets_file_the_smallest_real_one_never_the_tiny_model(workspace: tuple[Path, Path]) -> None:
    root, models = workspace
    (models / load_preset("rwkv7-0.1b", root).checkpoint).unlink()
    assert compose("rwkv1c_real_base", root).stdout.strip() == str(models / "A-small.pth")
    (models / "A-small.pth").unlink()
    (models / "B-large.pth").unlink()
    nothing = compose("rwkv1c_real_base", root)
    assert nothing.returncode == 0 and nothing.stdout.strip() == ""  # only the tiny model: the CPU path


def test_an_unknown_preset_stops_with_its_name(workspace: tuple[Path, Path]) -> None:
    root, _ = workspace
    (root / "configs" / "workspace.env").write_text("MODEL_PRESET=rwkv7-9b\n")
    failed = compose("rwkv1c_real_base", root)
    assert failed.returncode != 0 and "rwkv7-9b" in failed.stderr


def test_quickstart_ends_with_what_to_do_next() -> None:
    """The guidance a user reads after the run: the tiny model writes nonsense; chat, serve, eval, a real model."""
    text = (REPO / "scripts" / "quickstart.sh").read_text(encoding="utf-8")
    tail = text[text.index("# 7. What this was") :]
    for words in (
        "writes nonsense",
        "rwkv1c doctor",
        "download_model.sh",
        "rwkv1c chat",
        "rwkv1c serve",
        "rwkv1c eval",
    ):
        assert words in tail
    assert "ls -1" not in text and "models/base/*.pth" not in text  # no choice by file name
