"""Typed configuration read from the `configs/` `.env` files.

One mechanism for every settings file: uppercase `KEY=value` lines are mapped onto the fields of a
frozen dataclass (`KEY` -> `key`), coerced to the field's type and validated once; unknown keys and
bad values are all reported together. Later sources override earlier ones:

    workspace.env  <  model preset  <  profile  <  command-line flags

The files live in the workspace (the repository checkout). `workspace_root()` finds it from the
current directory, so commands work from any sub-folder of the checkout.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

from rwkv1c.errors import UserError, raise_all

T = TypeVar("T")

_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def workspace_root(start: Path | None = None) -> Path:
    """The checkout holding `configs/`: the first parent of ``start`` (default: cwd) that has one.

    Falls back to the checkout this package was installed from (editable install), then to cwd.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "configs" / "model").is_dir():
            return candidate
    source_checkout = Path(__file__).resolve().parents[2]
    if (source_checkout / "configs" / "model").is_dir():
        return source_checkout
    return here


def output_folder(root: Path, folder: Path) -> Path:
    """Where a workspace folder setting (RUNS_DIR, MODELS_DIR, ...) points.

    Relative settings mean the workspace's folder when the command runs inside the workspace, and the
    current directory's otherwise: outputs never land in a checkout the user is not working in.
    """
    if folder.is_absolute():
        return folder
    cwd = Path.cwd().resolve()
    inside = cwd == root.resolve() or root.resolve() in cwd.parents
    return (root if inside else cwd) / folder


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a `KEY=value` settings file; scripts/bootstrap.sh reads configs/workspace.env through this too.

    The one rule for every `configs/*.env` file:

    - UTF-8, a byte-order mark at the start is ignored; lines end in LF, CRLF or CR (a file saved by a
      Windows editor through \\\\wsl$ reads the same as one written in Linux).
    - Blank lines and lines starting with `#` are skipped; a leading `export ` is allowed.
    - `KEY=value` with KEY in UPPERCASE_WITH_DIGITS; spaces around `=` and the value are dropped.
    - A value starting with `"` or `'` ends at the next same quote; only spaces and a `# comment` may follow it.
      An unquoted value ends at a `#` that follows a space or tab (`a#b` keeps its `#`).
    - No escapes and no `$VAR` expansion. A key given twice: the later line wins.

    Every malformed line is reported at once, with its line number.
    """
    if not path.is_file():
        raise UserError(f"settings file not found: {path}")
    values: dict[str, str] = {}
    problems: list[str] = []
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 text (byte {exc.start})",
            hint="save it as UTF-8 (in Notepad: Save as, Encoding UTF-8)",
        ) from None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY_RE.match(key):
            problems.append(f"{path}:{lineno}: expected UPPERCASE_KEY=value, got {line!r}")
            continue
        parsed = _env_value(value.strip())
        if parsed is None:
            problems.append(f"{path}:{lineno}: {key}: a quoted value must end with its quote, then only a # comment")
            continue
        values[key] = parsed
    raise_all(problems, "malformed settings file")
    return values


def _env_value(text: str) -> str | None:
    """The value part of a `KEY=value` line (already stripped) by read_env_file's rule, or None if malformed."""
    if text[:1] in ('"', "'"):
        end = text.find(text[0], 1)
        rest = text[end + 1 :].strip() if end > 0 else "?"
        return text[1:end] if not rest or rest.startswith("#") else None
    comment = re.search(r"\s#", text)
    return (text[: comment.start()] if comment else text).strip()


def _coerce(raw: str, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if raw.strip() == "" or raw.lower() == "none":
            return None
        return _coerce(raw, members[0], key)
    if tp is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{key}={raw!r}: expected true/false")
    if tp is int:
        return int(float(raw)) if re.fullmatch(r"[0-9.eE+-]+", raw) and float(raw).is_integer() else int(raw)
    if tp is float:
        return float(raw)
    if tp is str:
        return raw
    if tp is Path:
        return Path(raw)
    if origin is Literal:
        choices = get_args(tp)
        if raw not in choices:
            raise ValueError(f"{key}={raw!r}: expected one of {', '.join(map(str, choices))}")
        return raw
    if origin in (list, tuple):
        (item,) = get_args(tp)[:1]
        parts = [p.strip() for p in raw.replace(",", " ").split() if p.strip()]
        return tuple(_coerce(p, item, key) for p in parts)
    raise TypeError(f"unsupported settings type for {key}: {tp!r}")


def from_mapping(cls: type[T], *sources: Mapping[str, Any], origin: str = "settings") -> T:
    """Build dataclass ``cls`` from `KEY -> value` mappings (later wins), validating every key.

    String values are coerced to the field types; other values (CLI overrides) are used as they are.
    Keys not matching a field are errors, so a typo never silently does nothing.
    """
    hints = typing.get_type_hints(cls)
    known = {f.name.upper(): f.name for f in fields(cls)}  # type: ignore[arg-type]
    retired: Mapping[str, str] = getattr(cls, "RETIRED", {})
    kwargs: dict[str, Any] = {}
    problems: list[str] = []
    for source in sources:
        for key, value in source.items():
            if key.upper() in retired:
                import sys

                print(f"note: {origin}: {key.upper()} is no longer used ({retired[key.upper()]})", file=sys.stderr)
                continue
            name = known.get(key.upper())
            if name is None:
                problems.append(f"unknown setting {key} (known: {', '.join(sorted(known))})")
                continue
            if value is None:
                continue
            try:
                kwargs[name] = _coerce(value, hints[name], key.upper()) if isinstance(value, str) else value
            except ValueError as exc:
                problems.append(str(exc))
    raise_all(problems, f"invalid {origin}")
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise UserError(f"invalid {origin}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        raise_all(validate(), f"invalid {origin}")
    return obj


def to_env_lines(obj: Any) -> list[str]:
    """Render a settings dataclass back to `KEY=value` lines (for saving the resolved config)."""
    lines = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        lines.append(f"{f.name.upper()}={'' if value is None else value}")
    return lines


def as_dict(obj: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a settings dataclass."""
    out = dataclasses.asdict(obj)
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


# The six large matrices of every block: what LoRA adapts and what QLoRA and quantised inference store
# in 8 or 4 bits (the names of their checkpoint keys, `blocks.N.<name>.weight`).
BLOCK_LINEARS = ("att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value")
EXTRA_GROUPS = ("norms", "time_mix", "emb", "head")  # parameter groups that can train whole
# How the block linears are stored: "none" is full precision (bf16 / fp16 / fp32), the one spelling of it.
Quant = Literal["none", "int8", "nf4"]
QUANTS: tuple[Quant, ...] = ("none", "int8", "nf4")


@dataclass(frozen=True)
class Workspace:
    """Machine settings from `configs/workspace.env` (git-ignored; see `workspace.env.example`)."""

    torch_version: str = "2.13.0"
    torch_index_url: str = ""
    model_preset: str = "rwkv7-1.5b"
    profile: str = "lora-bf16"
    models_dir: Path = Path("models/base")
    data_dir: Path = Path("data")
    runs_dir: Path = Path("runs")
    num_gpus: int = 1
    hf_endpoint: str = "https://huggingface.co"
    quant: Quant = "none"  # how generate / chat / serve / eval store the block linears: none, int8, nf4
    quant_head: bool = False  # quantise the head too (a little less memory, a little less accuracy)

    # settings earlier versions read, accepted with a note so an old workspace.env keeps working
    RETIRED: ClassVar[dict[str, str]] = {"LOGS_DIR": "each run logs into runs/NAME/train.log"}

    def validate(self) -> list[str]:
        problems = []
        if self.num_gpus < 1:
            problems.append(f"NUM_GPUS={self.num_gpus}: must be at least 1")
        return problems


def load_workspace(root: Path | None = None) -> Workspace:
    """Workspace settings: `configs/workspace.env` when present, else the example's defaults."""
    root = root or workspace_root()
    path = root / "configs" / "workspace.env"
    sources: list[Mapping[str, str]] = [read_env_file(path)] if path.is_file() else []
    return from_mapping(Workspace, *sources, origin=str(path))


@dataclass(frozen=True)
class ModelPreset:
    """A released RWKV-7 size from `configs/model/<name>.env`."""

    name: str
    params: str
    n_layer: int
    n_embd: int
    ctx_len: int = 4096
    checkpoint: str = ""
    url: str = ""
    sha256: str = ""
    size_bytes: int = 0
    lr: float = 1e-4

    def validate(self) -> list[str]:
        problems = []
        if self.n_layer <= 0 or self.n_embd <= 0 or self.n_embd % 64:
            problems.append(
                f"N_LAYER={self.n_layer} / N_EMBD={self.n_embd}: need positive sizes, N_EMBD a multiple of 64"
            )
        return problems


def preset_names(root: Path | None = None) -> list[str]:
    """Names of the presets in `configs/model/`."""
    folder = (root or workspace_root()) / "configs" / "model"
    return sorted(p.stem for p in folder.glob("*.env"))


def load_preset(name: str, root: Path | None = None) -> ModelPreset:
    """Load `configs/model/<name>.env` (or a path to such a file)."""
    root = root or workspace_root()
    path = Path(name) if name.endswith(".env") else root / "configs" / "model" / f"{name}.env"
    if not path.is_file():
        raise UserError(
            f"unknown model preset {name!r}",
            hint=f"choose one of: {', '.join(preset_names(root)) or '(none found under configs/model)'}",
        )
    return from_mapping(ModelPreset, {"NAME": path.stem}, read_env_file(path), origin=str(path))


def load_profile(name: str, root: Path | None = None) -> dict[str, str]:
    """`configs/profile/<name>.env` (or a path to an .env file) as KEY -> value."""
    folder = (root or workspace_root()) / "configs" / "profile"
    path = Path(name) if name.endswith(".env") else folder / f"{name}.env"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.env"))
        raise UserError(f"unknown profile {name!r}", hint=f"choose one of: {', '.join(known) or '(none found)'}")
    return read_env_file(path)


def load_presets(root: Path | None = None) -> list[ModelPreset]:
    """Every preset in `configs/model/`."""
    return [load_preset(n, root) for n in preset_names(root)]


def preset_matching(n_layer: int, n_embd: int, root: Path | None = None) -> str | None:
    """The model preset with these sizes (configs/model/*.env), if exactly one matches."""
    matches = [p.name for p in load_presets(root) if (p.n_layer, p.n_embd) == (n_layer, n_embd)]
    return matches[0] if len(matches) == 1 else None


def env_overrides(values: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """CLI overrides as a `KEY -> value` mapping, dropping flags the user did not give (None)."""
    return {k.upper(): v for k, v in values if v is not None}


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning settings: `configs/profile/<name>.env` over a model preset's CTX_LEN / LR, then CLI flags."""

    method: Literal["lora", "full"] = "lora"  # LoRA on a frozen base, or every parameter trained (full)
    quant: Quant = "none"  # how the frozen block linears are stored (LoRA only)
    lora_r: int = 32
    lora_alpha: float = 64.0  # the adapter's update is (alpha / r) * B @ A
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = BLOCK_LINEARS  # block linears that get LoRA (att.*, ffn.*)
    train_extra: tuple[str, ...] = ()  # whole parameter groups trained too: norms, time_mix, emb, head
    lr: float = 1e-4
    lr_final_ratio: float = 0.1  # cosine decay ends at lr * this
    warmup_steps: int = 20
    weight_decay: float = 0.0  # on LoRA matrices only
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ctx_len: int = 4096
    micro_bsz: int = 1
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int = 0  # optimizer steps; 0: as many as `epochs` take
    seed: int = 42
    val_fraction: float = 0.02  # documents held out for validation when no VAL_DATA is given
    val_data: str = ""  # a binidx prefix or JSONL file used for validation instead
    val_every: int = 100  # optimizer steps between validations (and at the end)
    val_max_windows: int = 64  # cap on validation windows per evaluation; 0: all
    log_every: int = 10
    save_every: int = 200
    keep_checkpoints: int = 2
    grad_ckpt: bool = False
    compile: Literal["auto", "on", "off"] = "auto"  # torch.compile the block elementwise ops; auto: on a GPU
    # replay each step from a CUDA graph; auto: one GPU, micro-batches of at most 8192 tokens, not int8
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU

    def validate(self) -> list[str]:
        problems = []
        positive = ("lora_r", "ctx_len", "micro_bsz", "grad_accum", "epochs", "log_every", "save_every")
        problems += [f"{k.upper()}={getattr(self, k)}: must be at least 1" for k in positive if getattr(self, k) < 1]
        nonneg = ("max_steps", "warmup_steps", "val_every", "val_max_windows", "keep_checkpoints")
        problems += [f"{k.upper()}={getattr(self, k)}: must not be negative" for k in nonneg if getattr(self, k) < 0]
        above_zero = ("lr", "lora_alpha")
        problems += [f"{k.upper()}={getattr(self, k)}: must be positive" for k in above_zero if getattr(self, k) <= 0]
        if not 0 <= self.lora_dropout < 1 or not 0 <= self.val_fraction < 1 or not 0 <= self.lr_final_ratio <= 1:
            problems.append("LORA_DROPOUT and VAL_FRACTION must be in [0, 1), LR_FINAL_RATIO in [0, 1]")
        if self.weight_decay < 0 or self.grad_clip < 0:
            problems.append("WEIGHT_DECAY and GRAD_CLIP must not be negative")
        bad = [t for t in self.lora_targets if t not in BLOCK_LINEARS]
        if bad or not self.lora_targets:
            problems.append(f"LORA_TARGETS={','.join(self.lora_targets)}: choose from {', '.join(BLOCK_LINEARS)}")
        bad = [g for g in self.train_extra if g not in EXTRA_GROUPS]
        if bad:
            problems.append(f"TRAIN_EXTRA={','.join(bad)}: choose from {', '.join(EXTRA_GROUPS)}")
        if self.method == "full" and self.quant != "none":
            problems.append(
                f"METHOD=full trains every weight: QUANT={self.quant} (a frozen quantised base) does not apply"
            )
        return problems
