"""What a checkpoint is, read from its tensor shapes (`rwkv1c inspect` prints it)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rwkv1c.errors import UserError
from rwkv1c.model.config import UNUSED_BLOCK0_KEYS, ModelConfig


def describe(path: Path) -> dict[str, Any]:
    """Family, sizes, parameter count, dtype and nearest preset of an RWKV-7 `.pth` file."""
    from rwkv1c.config import load_presets
    from rwkv1c.model.checkpoint import load_checkpoint

    sd = load_checkpoint(path)
    cfg = ModelConfig.from_state_dict(sd)
    unused = set(UNUSED_BLOCK0_KEYS)
    params = sum(t.numel() for k, t in sd.items() if k not in unused)
    embed = sd["emb.weight"].numel() + sd["head.weight"].numel()
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in sd.values())
    nearest = None
    try:
        presets = load_presets()
    except UserError:
        presets = []
    if presets:
        best = min(
            presets, key=lambda p: abs(p.n_layer - cfg.n_layer) / p.n_layer + abs(p.n_embd - cfg.n_embd) / p.n_embd
        )
        exact = best.n_layer == cfg.n_layer and best.n_embd == cfg.n_embd
        nearest = {"name": best.name, "exact": exact}
    return {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "family": "RWKV-7 (x070)",
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "n_head": cfg.n_head,
        "head_size": cfg.head_size,
        "vocab_size": cfg.vocab_size,
        "dim_ffn": cfg.dim_ffn,
        "low_rank": {"decay": cfg.d_decay, "aaa": cfg.d_aaa, "mv": cfg.d_mv, "gate": cfg.d_gate},
        "parameters": params,
        "non_embedding_parameters": params - embed,
        "dtype": dtypes.most_common(1)[0][0] if len(dtypes) == 1 else dict(dtypes),
        "block0_value_residual_keys": any(k in sd for k in unused),
        "nearest_preset": nearest,
    }


def format_description(info: dict[str, Any]) -> str:
    """Human-readable lines for `describe`'s result."""
    lr = info["low_rank"]
    near = info["nearest_preset"]
    near_text = "none" if near is None else f"{near['name']}{'' if near['exact'] else ' (closest; shapes differ)'}"
    rows = [
        ("file", f"{info['file']} ({info['size_bytes'] / 2**20:.1f} MiB)"),
        ("family", info["family"]),
        ("layers", info["n_layer"]),
        ("width", info["n_embd"]),
        ("heads", f"{info['n_head']} x {info['head_size']}"),
        ("vocab", info["vocab_size"]),
        ("ffn", info["dim_ffn"]),
        ("low-rank", f"decay {lr['decay']}, aaa {lr['aaa']}, mv {lr['mv']}, gate {lr['gate']}"),
        (
            "parameters",
            f"{info['parameters'] / 1e6:.2f}M ({info['non_embedding_parameters'] / 1e6:.2f}M non-embedding)",
        ),
        ("dtype", info["dtype"]),
        ("preset", near_text),
    ]
    return "\n".join(f"{k:<11} {v}" for k, v in rows)
