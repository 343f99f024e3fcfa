"""Settings files: parsing, typed coercion, unknown keys and validation, all reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from rwkv1c.config import TrainConfig, Workspace, from_mapping, load_preset, read_env_file
from rwkv1c.errors import UserError


def test_env_file_syntax(tmp_path: Path) -> None:
    path = tmp_path / "a.env"
    path.write_text('# comment\n\nexport A=1\nB="two words"\nC=3 # trailing\nD=\n', encoding="utf-8")
    assert read_env_file(path) == {"A": "1", "B": "two words", "C": "3", "D": ""}


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("bom", [False, True])
def test_env_file_from_a_windows_editor_reads_the_same(tmp_path: Path, newline: str, bom: bool) -> None:
    """CRLF (or old-Mac CR) line ends and a UTF-8 byte-order mark: what Notepad writes through \\\\wsl$."""
    text = (
        "# settings\n"
        'TORCH_VERSION="2.12.1"   # quoted, then a comment\n'
        "TORCH_INDEX_URL='https://download.pytorch.org/whl/cu126' # single quotes\n"
        "MODELS_DIR = /data/models # spaces around = and a comment\n"
        "RUNS_DIR=runs#2\n"
        'PROFILE="lora-bf16"\n'
        "HF_ENDPOINT=https://hf-mirror.example\t# a tab before the comment\n"
    )
    path = tmp_path / "workspace.env"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.replace("\n", newline).encode())
    assert read_env_file(path) == {
        "TORCH_VERSION": "2.12.1",
        "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cu126",
        "MODELS_DIR": "/data/models",
        "RUNS_DIR": "runs#2",
        "PROFILE": "lora-bf16",
        "HF_ENDPOINT": "https://hf-mirror.example",
    }


def test_env_file_bad_quotes_and_encoding_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.env"
    path.write_text('A="open\nB=\'x\' trailing\nC="fine" # ok\n', encoding="utf-8")
    with pytest.raises(UserError) as info:
        read_env_file(path)
    message = str(info.value)
    assert f"{path}:1: A:" in message and f"{path}:2: B:" in message and ":3:" not in message
    ansi = tmp_path / "ansi.env"
    ansi.write_bytes("MODELS_DIR=/home/пользователь\n".encode("cp1251"))
    with pytest.raises(UserError, match="not UTF-8") as info:
        read_env_file(ansi)
    assert "UTF-8" in (info.value.hint or "")


def test_env_file_errors_name_every_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.env"
    path.write_text("lower=1\nGOOD=2\nno equals sign\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        read_env_file(path)
    message = str(info.value)
    assert f"{path}:1:" in message and f"{path}:3:" in message and ":2:" not in message
    with pytest.raises(UserError, match="not found"):
        read_env_file(tmp_path / "missing.env")


def test_typed_coercion_and_unknown_keys() -> None:
    cfg = from_mapping(TrainConfig, {"LORA_R": "16", "QUANT": "nf4", "LORA_TARGETS": "att.key, ffn.value"})
    assert cfg.lora_r == 16 and cfg.quant == "nf4" and cfg.lora_targets == ("att.key", "ffn.value")
    with pytest.raises(UserError) as info:
        from_mapping(TrainConfig, {"LORA_RANK": "8", "QUANT": "nf5", "GRAD_CKPT": "maybe"})
    message = str(info.value)
    assert "unknown setting LORA_RANK" in message and "QUANT='nf5'" in message and "GRAD_CKPT" in message


def test_validation_names_each_bad_setting() -> None:
    with pytest.raises(UserError) as info:
        from_mapping(TrainConfig, {"LR": "-1", "MICRO_BSZ": "0"})
    message = str(info.value)
    assert "LR=-1.0: must be positive" in message and "MICRO_BSZ=0: must be at least 1" in message
    assert "LORA_ALPHA" not in message
    with pytest.raises(UserError, match="NUM_GPUS=0"):
        from_mapping(Workspace, {"NUM_GPUS": "0"})


def test_presets_match_the_released_shapes() -> None:
    shapes = {
        n: (p.n_layer, p.n_embd)
        for n in ("rwkv7-0.1b", "rwkv7-0.4b", "rwkv7-1.5b", "rwkv7-3b", "rwkv7-7.2b")
        for p in [load_preset(n)]
    }
    assert shapes == {
        "rwkv7-0.1b": (12, 768),
        "rwkv7-0.4b": (24, 1024),
        "rwkv7-1.5b": (24, 2048),
        "rwkv7-3b": (32, 2560),
        "rwkv7-7.2b": (32, 4096),
    }
    with pytest.raises(UserError, match="unknown model preset"):
        load_preset("rwkv7-99b")
