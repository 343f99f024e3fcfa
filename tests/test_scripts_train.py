"""The wrapper scripts run end to end on a tiny model: train (three profiles), resume, merge."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from rwkv1c.model.checkpoint import load_checkpoint
from tests.conftest import REPO

TINY = ["--ctx-len", "32", "--micro-bsz", "2", "--grad-accum", "1", "--device", "cpu", "--override", "WARMUP_STEPS=1"]


def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
        cwd="/",  # the scripts find the repository themselves
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rwkv1c.data.binidx import BinIdxWriter

    prefix = tmp_path_factory.mktemp("data") / "train"
    g = torch.Generator().manual_seed(0)
    with BinIdxWriter(prefix) as w:
        for _ in range(10):
            w.add([*torch.randint(1, 65536, (int(torch.randint(20, 60, (1,), generator=g)),), generator=g).tolist(), 0])
    return prefix


@pytest.mark.parametrize("profile", ["lora_bf16", "qlora_nf4", "qlora_int8"])
def test_train_scripts_run_and_merge(tiny_pth: Path, sample: Path, tmp_path: Path, profile: str) -> None:
    runs = tmp_path / "runs"
    common = ["--model", str(tiny_pth), "--data", str(sample), "--runs-dir", str(runs), "--run", "s", *TINY]
    done = script(f"train_{profile}.sh", *common, "--max-steps", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((runs / "s" / "config.json").read_text())
    assert config["profile"] == profile.replace("_", "-")
    assert config["train"]["quant"] == {"lora_bf16": "none", "qlora_nf4": "nf4", "qlora_int8": "int8"}[profile]
    if profile == "lora_bf16":  # resume through the script: only the run name and the new end are needed
        more = script(f"train_{profile}.sh", "--runs-dir", str(runs), "--run", "s", "--resume", "--max-steps", "3")
        assert more.returncode == 0, more.stderr[-3000:]
        assert "resumed from step-000002" in more.stderr
        assert json.loads((runs / "s" / "adapter" / "adapter_config.json").read_text())["step"] == 3
    out = tmp_path / "merged.pth"
    merged = script("merge_lora.sh", str(runs / "s" / "adapter"), "--output", str(out))
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert f"into {out}" in merged.stdout
    base, result = load_checkpoint(tiny_pth), load_checkpoint(out)
    assert list(result) == list(base) and all(result[k].shape == base[k].shape for k in base)
    if profile != "lora_bf16":
        assert "quantisation gap" in merged.stdout


def test_train_script_names_the_missing_default_base(sample: Path, tmp_path: Path) -> None:
    from rwkv1c.config import load_preset, load_workspace

    ws = load_workspace(REPO)
    default = REPO / ws.models_dir / load_preset(ws.model_preset, REPO).checkpoint
    if default.exists():
        pytest.skip(f"{default} exists here; the script would train the real model")
    done = script("train_lora_bf16.sh", "--data", str(sample), "--runs-dir", str(tmp_path))
    assert done.returncode == 1
    assert "download_model.sh" in done.stderr and str(default) in done.stderr
    assert not any(tmp_path.iterdir())


def test_merge_script_refuses_unknown_runs(tmp_path: Path) -> None:
    done = script("merge_lora.sh", "no-such-run-anywhere")
    assert done.returncode == 1 and "no adapter" in done.stderr
    assert script("merge_lora.sh").returncode == 2
