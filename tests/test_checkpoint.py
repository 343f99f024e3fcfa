"""Checkpoint files: the cached sha256 of a base, and the torch-free sizes that every part reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from rwkv1c.model import checkpoint
from rwkv1c.model.config import ModelConfig, low_rank_sizes
from tests.conftest import random_state_dict


def counting_hasher(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the file hasher with one that records each file it reads."""
    import rwkv1c.fsutil as fsutil

    real = fsutil.sha256_file
    read: list[Path] = []

    def hashing(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
        read.append(Path(path))
        return real(path, chunk)

    monkeypatch.setattr(fsutil, "sha256_file", hashing)
    return read


def test_a_second_launch_reads_the_digest_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    read = counting_hasher(monkeypatch)
    base = tmp_path / "base.pth"
    base.write_bytes(b"weights" * 1000)
    first = checkpoint.file_sha256(base)
    second = checkpoint.file_sha256(base)
    import hashlib

    assert first == second == hashlib.sha256(base.read_bytes()).hexdigest()
    assert read == [base]  # hashed once; the second answer came from the cache
    entries = json.loads((tmp_path / "cache" / "rwkv1c" / "sha256.json").read_text())
    assert entries[str(base.resolve())]["sha256"] == first


@pytest.mark.parametrize("change", ["content same size", "size", "replaced file"])
def test_a_changed_file_is_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    read = counting_hasher(monkeypatch)
    base = tmp_path / "base.pth"
    base.write_bytes(b"a" * 4096)
    old = checkpoint.file_sha256(base)
    st = base.stat()
    if change == "content same size":  # same size, new mtime
        base.write_bytes(b"b" * 4096)
        os.utime(base, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    elif change == "size":
        base.write_bytes(b"a" * 4097)
    else:  # another file renamed over it: a new inode, the old mtime restored
        other = tmp_path / "other"
        other.write_bytes(b"c" * 4096)
        os.replace(other, base)
        os.utime(base, ns=(st.st_atime_ns, st.st_mtime_ns))
    new = checkpoint.file_sha256(base)
    assert new != old and len(read) == 2


def test_an_unreadable_cache_only_costs_the_hashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache" / "rwkv1c" / "sha256.json"
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = tmp_path / "base.pth"
    base.write_bytes(b"x" * 10)
    import hashlib

    assert checkpoint.file_sha256(base) == hashlib.sha256(b"x" * 10).hexdigest()
    assert json.loads(cache.read_text())  # rewritten as valid JSON


def test_train_and_adapter_loading_share_the_cached_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_pth: Path
) -> None:
    """An adapter check after a training run reads the base's digest from the cache (no second pass)."""
    from rwkv1c.model.adapter import check_base
    from rwkv1c.model.checkpoint import load_checkpoint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    digest = checkpoint.file_sha256(tiny_pth)
    read = counting_hasher(monkeypatch)
    cfg = ModelConfig.from_state_dict(load_checkpoint(tiny_pth))
    import dataclasses

    config = {"base": {"file": tiny_pth.name, "sha256": digest, "model_config": dataclasses.asdict(cfg)}}
    check_base(config, tiny_pth, cfg)
    assert read == []


def test_model_config_shapes_are_the_model_s_shapes() -> None:
    """ModelConfig.expected_shapes (torch-free, used to validate files) equals the module's parameters."""
    from rwkv1c.model.rwkv7 import RWKV7

    for cfg in (ModelConfig(2, 128), ModelConfig(3, 192, 1000, 512, 32, 64, 32, 96)):
        with torch.device("meta"):
            model = RWKV7(cfg)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == cfg.expected_shapes()
        unused_block0 = cfg.n_embd + 2 * cfg.n_embd * cfg.d_mv  # v0 (1, 1, C), v1 (C, d_mv), v2 (d_mv, C)
        # n_params counts block 0's unused v0 / v1 / v2, as the released files carry them
        assert cfg.n_params == sum(v.numel() for v in model.state_dict().values()) + unused_block0


def test_one_low_rank_rule_the_released_sizes_first(tmp_path: Path) -> None:
    assert low_rank_sizes(2048) == (96, 96, 64, 256)  # 1.5B: the release, not 224 from another formula
    assert low_rank_sizes(1024) == (64, 64, 32, 128)  # 0.4B: the release (the rule alone says 160)
    assert ModelConfig(24, 2048).d_gate == 256
    from rwkv1c.commands.init import init
    from rwkv1c.model.checkpoint import load_checkpoint

    out = tmp_path / "m.pth"
    init(out, n_layer=1, n_embd=2048, vocab_size=128)
    assert ModelConfig.from_state_dict(load_checkpoint(out)).d_gate == 256


def test_a_checkpoint_with_a_wrong_shape_is_refused() -> None:
    from rwkv1c.errors import UserError

    sd = random_state_dict(n_layer=2, n_embd=128, vocab_size=256)
    sd["blocks.1.att.w2"] = sd["blocks.1.att.w2"][:, :64]
    with pytest.raises(UserError, match="inconsistent tensor shapes: blocks.1.att.w2"):
        checkpoint.check_state_dict(sd)
