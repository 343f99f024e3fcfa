"""Shared fixtures: tiny RWKV-7 checkpoints in the official key layout, made on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "ssl-3.2-ru"


def random_state_dict(
    n_layer: int = 2,
    n_embd: int = 128,
    vocab_size: int = 65536,
    *,
    dim_ffn: int | None = None,
    low_rank: tuple[int, int, int, int] = (24, 40, 16, 56),
    block0_v: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, torch.Tensor]:
    """Every parameter random (unlike `init`, which zeroes several): a hard case for parity tests.

    Scales keep activations O(1) so that a wrong formula shows up as a large difference.
    """
    from rwkv1c.model.init import init_state_dict

    g = torch.Generator().manual_seed(seed)
    base = init_state_dict(n_layer, n_embd, vocab_size, dim_ffn=dim_ffn, seed=seed)
    d_decay, d_aaa, d_mv, d_gate = low_rank
    sizes = {"w": d_decay, "a": d_aaa, "v": d_mv, "g": d_gate}
    C = n_embd
    sd: dict[str, torch.Tensor] = {}
    for k, v in base.items():
        name = k.split(".")[-1] if not k.endswith(".weight") and not k.endswith(".bias") else k.split(".")[-2]
        if k.startswith("blocks.") and ".att." in k and name[:1] in sizes and name[1:] in ("1", "2"):
            d = sizes[name[0]]
            shape = (C, d) if name[1] == "1" else (d, C)
            v = torch.randn(shape, generator=g) / shape[0] ** 0.5
        elif k.endswith(("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight", "ln_x.weight")):
            v = 1 + 0.2 * torch.randn(v.shape, generator=g)
        elif k.endswith(".bias"):
            v = 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith(("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")):
            v = torch.rand(v.shape, generator=g)
        elif k.endswith(("w0", "a0", "v0")):
            v = torch.randn(v.shape, generator=g)
        elif k.endswith(("k_k", "k_a")):
            v = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith("r_k"):
            v = 0.5 * torch.randn(v.shape, generator=g)
        elif k == "emb.weight":
            v = torch.randn(v.shape, generator=g)
        elif k.endswith(".weight"):
            v = torch.randn(v.shape, generator=g) / v.shape[1] ** 0.5
        sd[k] = v
    if block0_v:
        sd["blocks.0.att.v0"] = torch.randn(1, 1, C, generator=g)
        sd["blocks.0.att.v1"] = torch.randn(C, d_mv, generator=g) / C**0.5
        sd["blocks.0.att.v2"] = torch.randn(d_mv, C, generator=g) / d_mv**0.5
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def make_checkpoint(path: Path, **kwargs: object) -> Path:
    """Write `random_state_dict(**kwargs)` to `path` (a .pth file) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_state_dict(**kwargs), path)  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="session")
def tiny_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer, width-128, vocab-65536 checkpoint (bf16, official layout)."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pth")


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The shared 1C corpus; skips the test when it is not there."""
    if not CORPUS.is_dir():
        pytest.skip(f"1C corpus not found at {CORPUS} (only present in the development workspace)")
    return CORPUS
