"""Atomic writes: nothing appears on failure; the result has normal permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rwkv1c.fsutil import atomic_open, atomic_path, sha256_file, write_json


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("garbage")
        raise KeyboardInterrupt
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_permissions_follow_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = tmp_path / "f.txt"
        with atomic_open(target) as f:
            f.write("x")
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    finally:
        os.umask(old)
    assert sha256_file(target) == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"


def test_unwritable_targets_are_user_errors(tmp_path: Path) -> None:
    from rwkv1c.errors import UserError

    (tmp_path / "file.txt").write_text("keep")
    with pytest.raises(UserError, match="cannot write"), atomic_open(tmp_path / "file.txt" / "out.json"):
        pass
    with pytest.raises(UserError, match="is a folder"), atomic_open(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_output_folders_follow_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the workspace, RUNS_DIR means the workspace's runs/; outside it, the current folder's."""
    from rwkv1c.config import output_folder

    root = tmp_path / "checkout"
    (root / "sub").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(root / "sub")
    assert output_folder(root, Path("runs")) == root / "runs"
    monkeypatch.chdir(elsewhere)
    assert output_folder(root, Path("runs")) == elsewhere.resolve() / "runs"
    assert output_folder(root, tmp_path / "abs") == tmp_path / "abs"
