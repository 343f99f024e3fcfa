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
