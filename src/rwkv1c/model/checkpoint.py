"""Official RWKV-7 `.pth` files: read them safely, refuse what is not an RWKV-7 x070 state dict with a
message that says what it is, and hash them once.

A base checkpoint's sha256 ties an adapter to the weights it was trained on. Hashing 14 GB (7.2B) at
every launch would cost minutes, so `file_sha256` keeps the digests in a small cache keyed by the
file's absolute path, size, modification time and inode: any change to the file misses the cache and
hashes it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rwkv1c.errors import UserError
from rwkv1c.model.config import HEAD_SIZE, UNUSED_BLOCK0_KEYS, ModelConfig

if TYPE_CHECKING:
    import torch

_FAMILY_MARKERS = (
    ("RWKV-4", ("att.time_first",)),
    ("RWKV-5", ("att.time_faaaa", "att.time_mix_k")),
    ("RWKV-6", ("att.time_maa_x", "att.time_decay_w1", "att.time_maa_w1")),
    ("a pre-release RWKV-7 (x070 draft key names)", ("att.time_maa_", "att.time_aaa", "att.time_misc_")),
    ("an RWKV-7 DeepEmbed variant", ("ffn.s_emb", "ffn.s1", "ffn.s0")),
)


def check_state_dict(sd: Any) -> None:
    """Raise UserError unless `sd` is an RWKV-7 x070 state dict with head size 64."""
    import torch

    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) for k in sd):
        raise UserError("not a model state dict (expected a mapping of parameter names to tensors)")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"not a model state dict: {len(bad)} entries are not tensors (e.g. {bad[0]!r})")
    keys = list(sd)
    for family, markers in _FAMILY_MARKERS:
        if any(m in k for k in keys for m in markers):
            raise UserError(
                f"this checkpoint is {family}, not an RWKV-7 x070 model",
                hint="rwkv1c works with the official RWKV-7 releases (RWKV-x070-*.pth, rwkv7-*.pth)",
            )
    if "blocks.0.att.r_k" not in sd or "emb.weight" not in sd:
        raise UserError("not an RWKV-7 checkpoint: keys 'emb.weight' and 'blocks.0.att.r_k' are missing")
    H, N = sd["blocks.0.att.r_k"].shape
    if N != HEAD_SIZE:
        raise UserError(f"head size {N} is not supported (RWKV-7 releases use {HEAD_SIZE})")
    C = sd["emb.weight"].shape[1]
    if H * N != C:
        raise UserError(f"inconsistent shapes: r_k is {H}x{N} but the width is {C}")
    needed = [f"blocks.0.{k}" for k in ("att.w1", "att.a1", "att.g1", "ffn.key.weight")]
    if any(k not in sd for k in needed):
        raise UserError(f"not an RWKV-7 x070 checkpoint: keys missing (e.g. {next(k for k in needed if k not in sd)})")
    expected = ModelConfig.from_state_dict(sd).expected_shapes()
    missing = sorted(set(expected) - set(keys))
    extra = sorted(set(keys) - set(expected) - set(UNUSED_BLOCK0_KEYS))
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys missing (e.g. {', '.join(missing[:4])})")
    if extra:
        problems.append(f"{len(extra)} unexpected keys (e.g. {', '.join(extra[:4])})")
    if problems:
        raise UserError("not an RWKV-7 x070 checkpoint: " + "; ".join(problems))
    wrong = [f"{k}: {tuple(sd[k].shape)} != {v}" for k, v in expected.items() if tuple(sd[k].shape) != v]
    if wrong:
        raise UserError("inconsistent tensor shapes: " + "; ".join(wrong[:4]))


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """torch.load a `.pth` safely (weights only, memory-mapped), with clear errors for bad files."""
    import torch

    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.pth"))
        hint = f"for example {found[0]}" if found else "a .pth checkpoint, e.g. from `rwkv1c download`"
        raise UserError(f"{p} is a folder; pass the model file itself", hint=hint)
    if not p.is_file():
        raise UserError(f"model file not found: {p}")
    if p.stat().st_size == 0:
        raise UserError(f"model file is empty: {p}")
    if not zipfile.is_zipfile(p):
        raise UserError(
            f"{p} is not a PyTorch checkpoint (or it is truncated)",
            hint="re-download it; `rwkv1c download` checks size and sha256",
        )
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # corrupt archive, pickled code, ...
        raise UserError(f"cannot read {p}: {type(exc).__name__}: {exc}".strip()) from None
    check_state_dict(sd)
    return sd  # type: ignore[no-any-return]


def linear_names(n_layer: int, targets: tuple[str, ...] | list[str]) -> list[str]:
    """Full module names of block linears, e.g. `blocks.3.att.key` (targets as in `BLOCK_LINEARS`)."""
    return [f"blocks.{i}.{t}" for i in range(n_layer) for t in targets]


# ---------------------------------------------------------------------------------------------- sha256 cache


def sha256_cache_path() -> Path:
    """`$XDG_CACHE_HOME/rwkv1c/sha256.json` (default `~/.cache/rwkv1c/sha256.json`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rwkv1c" / "sha256.json"


def _file_key(path: Path) -> tuple[str, dict[str, int]]:
    st = path.stat()
    return str(path.resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def file_sha256(path: str | Path, cache: Path | None = None) -> str:
    """The file's hex sha256, from the cache when its path, size, mtime and inode are unchanged.

    A cache entry whose file changed in any of those is never trusted: the file is hashed again and the
    entry replaced. A cache that cannot be read or written only costs the hashing time.
    """
    from rwkv1c.fsutil import sha256_file, write_json

    path = Path(path)
    cache = cache or sha256_cache_path()
    key, stamp = _file_key(path)
    try:
        entries: dict[str, Any] = json.loads(cache.read_text(encoding="utf-8"))
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    hit = entries.get(key)
    if isinstance(hit, dict) and all(hit.get(k) == v for k, v in stamp.items()) and isinstance(hit.get("sha256"), str):
        return str(hit["sha256"])
    digest = sha256_file(path)
    if _file_key(path)[1] != stamp:  # changed while it was read: do not record a digest of a moving target
        return digest
    entries = {k: v for k, v in entries.items() if k != key and Path(k).exists()}  # forget files that are gone
    entries[key] = {**stamp, "sha256": digest}
    with contextlib.suppress(OSError, UserError):
        write_json(cache, entries)
    return digest
