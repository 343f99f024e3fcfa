"""rwkv1c: fine-tune RWKV-7 with LoRA / QLoRA for 1C:Enterprise code, and run it locally.

`from rwkv1c import RWKV7` is resolved lazily so that importing the package (and `rwkv1c --help`)
never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["RWKV7", "RWKVState", "__version__"]

if TYPE_CHECKING:
    from rwkv1c.model import RWKV7, RWKVState


def __getattr__(name: str) -> Any:
    if name in ("RWKV7", "RWKVState"):
        from rwkv1c import model

        return getattr(model, name)
    raise AttributeError(f"module 'rwkv1c' has no attribute {name!r}")
