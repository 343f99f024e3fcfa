"""A self-describing adapter folder, and applying one to a base model (unmerged).

    ADAPTER/adapter_model.safetensors   LoRA A/B per adapted linear (`blocks.N.att.key.lora_A` (r, in),
                                        `...lora_B` (out, r)), plus whole extra parameters under their
                                        checkpoint keys (e.g. `blocks.0.ln1.weight`); fp32
    ADAPTER/adapter_config.json         method, quantisation, r, alpha, targets, extra groups, the base
                                        (file name, sha256, sizes), prompt format, training config

`merge` and `generate` read r and alpha from the folder, so nobody re-types them, and refuse an
adapter made for another base.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rwkv1c.errors import UserError

if TYPE_CHECKING:
    import torch

    from rwkv1c.model.config import ModelConfig
    from rwkv1c.model.rwkv7 import RWKV7

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
FORMAT = "rwkv1c-lora"
FORMAT_VERSION = 1
# How prompts are shaped for the model: "rwkv-chat" is "User: ...\n\nAssistant: ..." (rwkv1c.data.prompts), what
# instruction rows train; "text" is plain text (code) to continue, what an adapter trained on text rows only saw.
PromptFormat = Literal["rwkv-chat", "text"]
PROMPT_FORMATS: tuple[PromptFormat, ...] = ("rwkv-chat", "text")


def adapter_config(
    *,
    base_path: Path,
    base_sha256: str,
    model_config: ModelConfig,
    quant: str,
    r: int,
    alpha: float,
    dropout: float,
    targets: list[str],
    extra_groups: list[str],
    extra_keys: list[str],
    training: dict[str, Any],
    step: int,
    prompt_format: PromptFormat = "rwkv-chat",
) -> dict[str, Any]:
    """The JSON that makes an adapter folder self-describing."""
    from rwkv1c import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": "lora" if quant == "none" else "qlora",
        "quantization": quant,
        "r": r,
        "alpha": alpha,
        "scale": alpha / r,
        "dropout": dropout,
        "targets": list(targets),
        "extra_groups": list(extra_groups),
        "extra_keys": list(extra_keys),
        "base": {
            "file": base_path.name,
            "sha256": base_sha256,
            "size_bytes": base_path.stat().st_size,
            "model_config": dataclasses.asdict(model_config),
        },
        "prompt_format": prompt_format,
        "step": step,
        "training": training,
        "rwkv1c_version": __version__,
    }


def save_adapter(folder: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write weights then config, each atomically (the config last: a folder without it is incomplete)."""
    from safetensors.torch import save_file

    from rwkv1c.fsutil import atomic_path, write_json

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    write_json(folder / CONFIG, config)


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """adapter_config.json of an adapter folder, checked for the fields merge and generate need."""
    folder = Path(folder)
    path = folder / CONFIG
    if folder.is_file():
        raise UserError(f"{folder} is a file; pass the folder that holds it", hint=f"--adapter {folder.parent}")
    if not folder.is_dir():
        raise UserError(f"adapter folder not found: {folder}")
    if not path.is_file() or not (folder / WEIGHTS).is_file():
        raise UserError(
            f"{folder} is not an adapter folder (it needs {WEIGHTS} and {CONFIG})",
            hint="pass runs/NAME/adapter or a checkpoint folder runs/NAME/checkpoints/step-N",
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    missing = [k for k in ("format", "r", "alpha", "targets", "base") if k not in config]
    if missing or config.get("format") != FORMAT:
        raise UserError(f"{path} is not an rwkv1c adapter config (missing: {', '.join(missing) or 'format'})")
    return config  # type: ignore[no-any-return]


def prompt_format(config: dict[str, Any]) -> PromptFormat:
    """The prompt format an adapter was trained in (adapters written before the field existed: chat)."""
    value = config.get("prompt_format", "rwkv-chat")
    return value if value in PROMPT_FORMATS else "rwkv-chat"


def read_adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / WEIGHTS))


def check_base(config: dict[str, Any], model_path: Path, model_config: ModelConfig, *, force: bool = False) -> None:
    """Refuse an adapter trained on another base: sizes must match; a different sha256 needs `force`."""
    from rwkv1c.model.checkpoint import file_sha256

    base = config["base"]
    want = base.get("model_config", {})
    have = dataclasses.asdict(model_config)
    diff = [f"{k} {want[k]} (adapter) vs {have[k]} (model)" for k in have if k in want and want[k] != have[k]]
    if diff:
        raise UserError(
            f"the adapter was trained on another model ({base.get('file')}): " + "; ".join(diff),
            hint=f"pass the base it was trained on: {base.get('file')}",
        )
    sha = base.get("sha256")
    if sha and not force and file_sha256(model_path) != sha:
        raise UserError(
            f"{model_path.name} has the same sizes but not the same weights as the adapter's base "
            f"({base.get('file')}, sha256 {sha[:12]}...); the adapter would apply to weights it was not trained on",
            hint="use the base named in adapter_config.json (if you know the two are equivalent, "
            "`rwkv1c merge --force` merges the adapter into this one anyway)",
        )


def apply_adapter(model: RWKV7, folder: Path, config: dict[str, Any] | None = None) -> RWKV7:
    """Inject LoRA with the folder's r / alpha / targets and load its tensors (no merge, dropout off)."""
    from rwkv1c.model.lora import add_lora, load_adapter_tensors

    config = config or read_adapter_config(folder)
    add_lora(
        model,
        r=int(config["r"]),
        alpha=float(config["alpha"]),
        dropout=0.0,
        targets=config["targets"],
        extra=config.get("extra_groups", []),
    )
    try:
        load_adapter_tensors(model, read_adapter_tensors(folder))
    except (KeyError, ValueError) as exc:
        raise UserError(f"the adapter in {folder} does not fit this model: {exc}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model
