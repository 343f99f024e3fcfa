"""`rwkv1c plan`: predict the peak GPU memory and host RAM of a fine-tuning run before starting it.

An analytical model with one small table of coefficients (`assets/vram_calibration.json`):

    GPU peak (what torch.cuda.max_memory_allocated reports) =
        quantised linears      n_quant   x bytes/param of the profile (bf16 2, int8 ~1, NF4 ~0.52)
      + other weights          n_other   x 2            (emb, head, norms, time-mix vectors, low-rank paths)
      + LoRA training state    n_lora    x 16           (fp32 weight, grad, Adam m and v)
      + activations            tokens x C x (n_layer x act_bytes)              without checkpointing
                               tokens x C x (n_layer x ckpt_bytes + act_bytes) with (one block recomputed)
      + loss                   min(tokens, 1024) x vocab x logit_bytes   (one cross-entropy chunk's fp32
                               logits, softmax and bf16 copy: rwkv1c.train never holds all the logits)
      + dequantisation buffer  the largest quantised matrix in bf16 (QLoRA only)
      + fixed                  allocator / cuBLAS / kernel workspaces

    on the card = peak x reserve_factor + cuda_context_gib   (torch's cache and the CUDA context)
    host RAM    = host_fixed_gib + checkpoint bytes x host_ckpt_factor   (mmap load, one copy)

`calibrate()` refits the uncertain coefficients from measured peaks, so calibration is a data change.
"""

from __future__ import annotations

import json as jsonlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from rwkv1c.errors import UserError

Quant = Literal["bf16", "int8", "nf4"]
LORA_TARGETS = ("att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value")
QUANTS: tuple[Quant, ...] = ("bf16", "int8", "nf4")
GIB = 2**30
VOCAB = 65536
DEFAULT_LORA_R = 32
CE_CHUNK = 1024  # positions per cross-entropy chunk in rwkv1c.train: only one chunk's logits are ever alive
CALIBRATION_FILE = Path(__file__).resolve().parent / "assets" / "vram_calibration.json"

# Low-rank sizes (decay, aaa, mv, gate) of the released RWKV-7 checkpoints, by width. The 0.1B/0.4B values are
# the demo's constants and the fla-hub conversions' configs; 1.5B/2.9B/7.2B follow the training code's rule
# (round(k * sqrt(C) / 32) * 32 with k 1.8 / 1.8 / 1.3, and round(0.6 * C**0.8 / 32) * 32 for the gate).
RELEASED_LOW_RANK: dict[int, tuple[int, int, int, int]] = {
    768: (64, 64, 32, 128),
    1024: (64, 64, 32, 128),
    2048: (96, 96, 64, 256),
    2560: (96, 96, 64, 320),
    4096: (128, 128, 96, 480),
}


def _round32(x: float) -> int:
    return max(32, int(round(x / 32) * 32))


def low_rank_for(n_embd: int) -> tuple[int, int, int, int]:
    """(decay, aaa, mv, gate) low-rank sizes for a width: the released ones, else the training code's rule."""
    if n_embd in RELEASED_LOW_RANK:
        return RELEASED_LOW_RANK[n_embd]
    root = n_embd**0.5
    return _round32(1.8 * root), _round32(1.8 * root), _round32(1.3 * root), _round32(0.6 * n_embd**0.8)


@dataclass(frozen=True)
class ModelShape:
    """The sizes that set memory use (torch-free, so presets plan instantly)."""

    n_layer: int
    n_embd: int
    vocab_size: int = VOCAB
    dim_ffn: int = 0
    d_decay: int = 64
    d_aaa: int = 64
    d_mv: int = 32
    d_gate: int = 128

    def __post_init__(self) -> None:
        if self.dim_ffn == 0:
            object.__setattr__(self, "dim_ffn", 4 * self.n_embd)

    @classmethod
    def for_width(cls, n_layer: int, n_embd: int, vocab_size: int = VOCAB) -> ModelShape:
        d, a, m, g = low_rank_for(n_embd)
        return cls(n_layer, n_embd, vocab_size, 4 * n_embd, d, a, m, g)

    @property
    def quant_params(self) -> int:
        """Parameters of the matrices a QLoRA profile quantises: att r/k/v/o and ffn key/value."""
        C, F = self.n_embd, self.dim_ffn
        return self.n_layer * (4 * C * C + 2 * C * F)

    @property
    def n_params(self) -> int:
        """Every parameter of an official checkpoint (block 0 keeps its unused v0/v1/v2 too)."""
        C, L = self.n_embd, self.n_layer
        low_rank = 2 * C * (self.d_decay + self.d_aaa + self.d_mv + self.d_gate)
        # x_r x_w x_k x_v x_a x_g, w0 a0 v0, k_k k_a r_k, ln_x w+b, ln1 w+b, ln2 w+b, ffn.x_k
        vectors = 6 * C + 3 * C + 3 * C + 2 * C + 4 * C + C
        per_layer = 4 * C * C + 2 * C * self.dim_ffn + low_rank + vectors
        return L * per_layer + 2 * self.vocab_size * C + 2 * C + 2 * C  # + ln0 (block 0) + ln_out

    @property
    def largest_quant_matrix(self) -> int:
        return self.n_embd * self.dim_ffn

    def lora_params(self, rank: int, targets: Sequence[str] = LORA_TARGETS) -> int:
        """LoRA A and B of each target matrix in every block: rank x (in + out) each."""
        C, F = self.n_embd, self.dim_ffn
        sizes = {"att.receptance": 2 * C, "att.key": 2 * C, "att.value": 2 * C, "att.output": 2 * C}
        sizes |= {"ffn.key": C + F, "ffn.value": F + C}
        return self.n_layer * rank * sum(sizes[t] for t in targets)

    def group_params(self, group: str) -> int:
        """Parameters of an extra trainable group: norms, time_mix, emb or head."""
        C, L = self.n_embd, self.n_layer
        if group == "norms":
            return L * 6 * C + 4 * C  # ln1, ln2, ln_x (weight + bias) per block; ln0 and ln_out
        if group == "time_mix":
            low_rank = 2 * C * (self.d_decay + self.d_aaa + self.d_mv + self.d_gate)
            return L * (low_rank + 13 * C)  # x_r..x_g, w0 a0 v0, k_k k_a r_k, ffn.x_k
        if group in ("emb", "head"):
            return self.vocab_size * C
        raise ValueError(f"unknown parameter group {group!r}")


@dataclass(frozen=True)
class Coefficients:
    """The per-term numbers of the memory model (`assets/vram_calibration.json`)."""

    bytes_per_param: Mapping[str, float] = field(default_factory=lambda: {"bf16": 2.0, "int8": 1.0, "nf4": 0.516})
    other_bytes_per_param: float = 2.0
    trainable_bytes_per_param: float = 16.0
    act_bytes: float = 120.0
    ckpt_bytes: float = 2.0
    # bitsandbytes' int8 matmul keeps its input for the backward pass outside autograd's saved tensors, so
    # gradient checkpointing does not free it: every layer holds ~9C values per token (bf16 + int8 copies)
    int8_act_bytes: float = 27.0
    logit_bytes: float = 10.0
    dequant_buffers: float = 2.0
    fixed_gib: float = 0.3
    reserve_factor: float = 1.07
    cuda_context_gib: float = 0.5
    host_fixed_gib: float = 2.0
    host_ckpt_factor: float = 1.0
    source: str = "first principles"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Coefficients:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known - {"note", "measured"})
        if unknown:
            raise UserError(f"unknown calibration keys: {', '.join(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bytes_per_param"] = dict(self.bytes_per_param)
        return out


def load_coefficients(path: Path | None = None) -> Coefficients:
    """The calibration table shipped with the package (or another file with the same keys)."""
    path = path or CALIBRATION_FILE
    try:
        data = jsonlib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the calibration table {path}: {exc}") from None
    return Coefficients.from_dict(data.get("coefficients", data))


@dataclass(frozen=True)
class RunShape:
    """One training configuration to predict."""

    quant: Quant
    ctx_len: int
    micro_bsz: int
    grad_ckpt: bool
    lora_r: int = DEFAULT_LORA_R
    lora_targets: tuple[str, ...] = LORA_TARGETS
    train_extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Estimate:
    """Predicted memory of one configuration, with its terms (bytes)."""

    terms: dict[str, float]
    peak_gib: float
    device_gib: float
    host_ram_gib: float

    def fits(self, vram_gib: float) -> bool:
        return self.device_gib <= vram_gib


def _features(shape: ModelShape, run: RunShape) -> dict[str, float]:
    """Each term's multiplier of its coefficient: prediction = sum(feature x coefficient)."""
    tokens = run.ctx_len * run.micro_bsz
    quantised = run.quant != "bf16"
    n_quant = shape.quant_params
    act_layers = 1 if run.grad_ckpt else shape.n_layer
    extra = sum(shape.group_params(g) for g in run.train_extra)  # trained in fp32: counted with the LoRA state
    return {
        f"w_{run.quant}": float(n_quant),
        "other": float(shape.n_params - n_quant - extra),
        "lora": float(shape.lora_params(run.lora_r, run.lora_targets) + extra),
        "act": float(tokens * shape.n_embd * act_layers),
        "ckpt": float(tokens * shape.n_embd * shape.n_layer) if run.grad_ckpt else 0.0,
        "int8_act": float(tokens * shape.n_embd * shape.n_layer) if run.quant == "int8" else 0.0,
        "logit": float(min(tokens, CE_CHUNK) * shape.vocab_size),
        "dequant": float(shape.largest_quant_matrix * 2) if quantised else 0.0,
        "fixed": float(GIB),
    }


def _coef_vector(c: Coefficients) -> dict[str, float]:
    vec = {f"w_{q}": float(c.bytes_per_param[q]) for q in QUANTS}
    vec.update(
        other=c.other_bytes_per_param,
        lora=c.trainable_bytes_per_param,
        act=c.act_bytes,
        ckpt=c.ckpt_bytes,
        int8_act=c.int8_act_bytes,
        logit=c.logit_bytes,
        dequant=c.dequant_buffers,
        fixed=c.fixed_gib,
    )
    return vec


def _with_vector(c: Coefficients, vec: Mapping[str, float], source: str) -> Coefficients:
    return replace(
        c,
        bytes_per_param={q: vec[f"w_{q}"] for q in QUANTS},
        other_bytes_per_param=vec["other"],
        trainable_bytes_per_param=vec["lora"],
        act_bytes=vec["act"],
        ckpt_bytes=vec["ckpt"],
        int8_act_bytes=vec["int8_act"],
        logit_bytes=vec["logit"],
        dequant_buffers=vec["dequant"],
        fixed_gib=vec["fixed"],
        source=source,
    )


def host_ram_gib(checkpoint_bytes: float, coeffs: Coefficients) -> float:
    """Host RAM while the base checkpoint is read and moved to the GPU."""
    return coeffs.host_fixed_gib + checkpoint_bytes * coeffs.host_ckpt_factor / GIB


def estimate(shape: ModelShape, run: RunShape, coeffs: Coefficients, checkpoint_bytes: float | None = None) -> Estimate:
    """Predicted peaks of one configuration."""
    feats = _features(shape, run)
    vec = _coef_vector(coeffs)
    terms = {name: feats[name] * vec[name] for name in feats}
    peak = sum(terms.values()) / GIB
    ckpt_bytes = checkpoint_bytes if checkpoint_bytes else shape.n_params * 2.0
    return Estimate(
        terms=terms,
        peak_gib=peak,
        device_gib=peak * coeffs.reserve_factor + coeffs.cuda_context_gib,
        host_ram_gib=host_ram_gib(ckpt_bytes, coeffs),
    )


# ---------------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class ProfileInfo:
    """What the memory model needs from a training profile (its TrainConfig settings)."""

    name: str
    quant: Quant
    lora_r: int = DEFAULT_LORA_R
    grad_ckpt: bool = False
    ctx_len: int = 4096
    micro_bsz: int = 1
    lora_targets: tuple[str, ...] = LORA_TARGETS
    train_extra: tuple[str, ...] = ()

    def run(self, ctx_len: int | None = None, micro_bsz: int | None = None, grad_ckpt: bool | None = None) -> RunShape:
        return RunShape(
            self.quant,
            self.ctx_len if ctx_len is None else ctx_len,
            self.micro_bsz if micro_bsz is None else micro_bsz,
            self.grad_ckpt if grad_ckpt is None else grad_ckpt,
            self.lora_r,
            self.lora_targets,
            self.train_extra,
        )


def resolve_profile(name: str, root: Path | None = None) -> ProfileInfo:
    """`configs/profile/<name>.env` read as the training settings, or a bare quantisation: bf16, int8, nf4."""
    from rwkv1c.config import TrainConfig, from_mapping, read_env_file, workspace_root

    path = (root or workspace_root()) / "configs" / "profile" / f"{name}.env"
    if path.is_file():
        cfg = from_mapping(TrainConfig, read_env_file(path), origin=str(path))
    elif name in QUANTS:
        cfg = TrainConfig(quant="none" if name == "bf16" else name)  # type: ignore[arg-type]
    else:
        raise UserError(
            f"unknown profile {name!r}: no configs/profile/{name}.env",
            hint=f"choose one of: {', '.join(profile_names(root))} (or a bare quantisation: bf16, int8, nf4)",
        )
    return ProfileInfo(
        name=name,
        quant="bf16" if cfg.quant == "none" else cfg.quant,
        lora_r=cfg.lora_r,
        grad_ckpt=cfg.grad_ckpt,
        ctx_len=cfg.ctx_len,
        micro_bsz=cfg.micro_bsz,
        lora_targets=tuple(cfg.lora_targets),
        train_extra=tuple(cfg.train_extra),
    )


def profile_names(root: Path | None = None) -> list[str]:
    """Profiles in `configs/profile/`, or the three quantisations when there are none."""
    from rwkv1c.config import workspace_root

    folder = (root or workspace_root()) / "configs" / "profile"
    names = sorted(p.stem for p in folder.glob("*.env")) if folder.is_dir() else []
    return names or list(QUANTS)


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelInfo:
    name: str
    shape: ModelShape
    checkpoint_bytes: float


def shape_from_checkpoint(path: Path) -> ModelShape:
    """Read the sizes from a `.pth` (memory-mapped, nothing loaded into RAM)."""
    from rwkv1c.model import ModelConfig, load_checkpoint

    cfg = ModelConfig.from_state_dict(load_checkpoint(path))
    return ModelShape(
        n_layer=cfg.n_layer,
        n_embd=cfg.n_embd,
        vocab_size=cfg.vocab_size,
        dim_ffn=cfg.dim_ffn,
        d_decay=cfg.d_decay,
        d_aaa=cfg.d_aaa,
        d_mv=cfg.d_mv,
        d_gate=cfg.d_gate,
    )


def resolve_model(model: str, root: Path | None = None) -> ModelInfo:
    """A preset name (configs/model/<name>.env) or a path to a checkpoint."""
    from rwkv1c.config import load_preset, preset_names

    path = Path(model).expanduser()
    if model.endswith(".pth") or path.is_file():
        if not path.is_file():
            raise UserError(f"model file not found: {path}")
        return ModelInfo(path.name, shape_from_checkpoint(path), float(path.stat().st_size))
    names = preset_names(root)
    if model not in names:
        raise UserError(f"unknown model {model!r}", hint=f"give a .pth file or one of: {', '.join(names)}")
    preset = load_preset(model, root)
    shape = ModelShape.for_width(preset.n_layer, preset.n_embd)
    size = float(preset.size_bytes) if preset.size_bytes else shape.n_params * 2.0
    return ModelInfo(preset.name, shape, size)


# ---------------------------------------------------------------------------------------------- calibration

# The coefficients calibrate() refits; the rest (bf16 bytes, fp32 Adam bytes) are exact by construction.
FIT_DEFAULT = ("w_int8", "w_nf4", "act", "ckpt", "int8_act", "logit", "fixed")


@dataclass(frozen=True)
class Measured:
    """One measured run: a row of bench/train.py's table."""

    preset: str
    profile: str
    ctx_len: int
    micro_bsz: int
    grad_ckpt: bool
    peak_gib: float
    lora_r: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measured:
        missing = [k for k in ("preset", "profile", "ctx_len", "micro_bsz", "grad_ckpt", "peak_gib") if k not in d]
        if missing:
            raise UserError(f"measured row {dict(d)} lacks {', '.join(missing)}")
        return cls(
            str(d["preset"]),
            str(d["profile"]),
            int(d["ctx_len"]),
            int(d["micro_bsz"]),
            bool(d["grad_ckpt"]),
            float(d["peak_gib"]),
            int(d["lora_r"]) if d.get("lora_r") is not None else None,
        )


@dataclass(frozen=True)
class CalibrationResult:
    coefficients: Coefficients
    rows: list[dict[str, Any]]
    max_rel_err: float


def _row_inputs(row: Measured, root: Path | None) -> tuple[ModelShape, RunShape]:
    info = resolve_model(row.preset, root)
    prof = resolve_profile(row.profile, root)
    if row.lora_r:
        prof = replace(prof, lora_r=row.lora_r)
    return info.shape, prof.run(row.ctx_len, row.micro_bsz, row.grad_ckpt)


def compare(
    rows: Sequence[Measured], coeffs: Coefficients, root: Path | None = None
) -> tuple[list[dict[str, Any]], float]:
    """Predicted vs measured peak for each row, and the largest relative error."""
    out = []
    for row in rows:
        shape, run = _row_inputs(row, root)
        pred = estimate(shape, run, coeffs).peak_gib
        out.append(
            {**asdict(row), "predicted_gib": round(pred, 3), "rel_err": round((pred - row.peak_gib) / row.peak_gib, 4)}
        )
    return out, max((abs(r["rel_err"]) for r in out), default=0.0)


def calibrate(
    rows: Iterable[Measured | Mapping[str, Any]],
    base: Coefficients | None = None,
    *,
    fit: Sequence[str] = FIT_DEFAULT,
    prior_weight: float = 1e-3,
    root: Path | None = None,
) -> CalibrationResult:
    """Refit the uncertain coefficients to measured peaks (relative least squares, pulled gently to ``base``).

    Each coefficient c is written c = prior x (1 + d); the fit minimises sum(((pred - measured) / measured)^2)
    + prior_weight x sum(d^2), so a coefficient the table says nothing about stays at its prior. Coefficients
    never go below zero.
    """
    import numpy as np

    base = base or load_coefficients()
    measured = [r if isinstance(r, Measured) else Measured.from_dict(r) for r in rows]
    if not measured:
        raise UserError("no measured rows to calibrate from")
    prior = _coef_vector(base)
    unknown = [name for name in fit if name not in prior]
    if unknown:
        raise UserError(f"cannot fit unknown coefficients: {', '.join(unknown)}")
    free = [name for name in fit if prior[name] > 0]
    feats = [_features(*_row_inputs(r, root)) for r in measured]
    y = np.array([r.peak_gib * GIB for r in measured])
    vec = dict(prior)
    for _ in range(len(free) + 1):  # drop coefficients that would turn negative, refit the rest
        A = np.array([[f.get(n, 0.0) * prior[n] for n in free] for f in feats]) / y[:, None]
        fixed = np.array([sum(f.get(n, 0.0) * vec[n] for n in prior if n not in free) for f in feats])
        b = 1.0 - fixed / y - A.sum(axis=1)
        A_reg = np.vstack([A, math.sqrt(prior_weight) * np.eye(len(free))])
        b_reg = np.concatenate([b, np.zeros(len(free))])
        delta = np.linalg.lstsq(A_reg, b_reg, rcond=None)[0] if free else np.zeros(0)
        negative = [n for n, d in zip(free, delta) if d < -1.0]
        for n, d in zip(free, delta):
            vec[n] = float(prior[n] * (1.0 + d))
        if not negative:
            break
        for n in negative:
            vec[n] = 0.0
            free.remove(n)
    coeffs = _with_vector(base, vec, source=f"fitted to {len(measured)} measured runs")
    table, worst = compare(measured, coeffs, root)
    return CalibrationResult(coeffs, table, worst)


def save_coefficients(result: CalibrationResult, path: Path = CALIBRATION_FILE) -> None:
    """Write a calibration (coefficients + the measured table it came from) as the shipped table."""
    from rwkv1c.fsutil import write_json

    write_json(
        path,
        {
            "coefficients": result.coefficients.to_dict(),
            "measured": result.rows,
            "max_rel_err": result.max_rel_err,
        },
    )


def calibrate_file(measured: Path, *, save_to: Path | None = None) -> CalibrationResult:
    """Fit to a measured table (a JSON list of rows, or {"rows": [...]}), optionally saving the result.

    Each row: preset, profile, ctx_len, micro_bsz, grad_ckpt, peak_gib (torch.cuda.max_memory_allocated in GiB),
    optionally lora_r. Prints predicted vs measured for every row and the largest relative error.
    """
    data = jsonlib.loads(Path(measured).read_text(encoding="utf-8"))
    rows = data["rows"] if isinstance(data, dict) else data
    result = calibrate(rows)
    print(format_calibration(result))
    if save_to is not None:
        save_coefficients(result, save_to)
    return result


def format_calibration(result: CalibrationResult) -> str:
    """Predicted vs measured peaks, one line per row."""
    lines = [
        f"{'preset':<12} {'profile':<12} {'ctx':>6} {'bsz':>4} {'ckpt':>5} {'measured':>9} {'predicted':>9} {'err':>7}"
    ]
    for r in result.rows:
        lines.append(
            f"{r['preset']:<12} {r['profile']:<12} {r['ctx_len']:>6} {r['micro_bsz']:>4} "
            f"{'on' if r['grad_ckpt'] else 'off':>5} {r['peak_gib']:>8.2f}G {r['predicted_gib']:>8.2f}G "
            f"{r['rel_err']:>+7.1%}"
        )
    lines.append(f"largest relative error {result.max_rel_err:.1%} ({result.coefficients.source})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the verb

CTX_CHOICES = (256, 512, 1024, 2048, 4096, 8192, 16384)
BSZ_CHOICES = (1, 2, 4, 8, 16, 32)


def detect_vram_gib() -> float | None:
    """Total memory of GPU 0 from nvidia-smi (no torch import), or None."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi") or (
        "/usr/lib/wsl/lib/nvidia-smi" if Path("/usr/lib/wsl/lib/nvidia-smi").exists() else None
    )
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"\s*(\d+)", out.stdout)
    return int(match.group(1)) / 1024 if out.returncode == 0 and match else None


def fit_table(
    shape: ModelShape,
    profiles: Sequence[ProfileInfo],
    coeffs: Coefficients,
    vram_gib: float,
    ctx_len: int,
    micro_bsz: int,
) -> list[dict[str, Any]]:
    """For each profile x checkpointing: the peak at the asked size, the longest ctx at micro-batch 1 and the
    largest micro-batch at the asked ctx that fit in ``vram_gib``."""
    rows = []
    for prof in profiles:
        for ckpt in (True, False):

            def dev(ctx: int, bsz: int, prof: ProfileInfo = prof, ckpt: bool = ckpt) -> float:
                return estimate(shape, prof.run(ctx, bsz, ckpt), coeffs).device_gib

            max_ctx = max((c for c in CTX_CHOICES if dev(c, 1) <= vram_gib), default=None)
            max_bsz = max((b for b in BSZ_CHOICES if dev(ctx_len, b) <= vram_gib), default=None)
            at = dev(ctx_len, micro_bsz)
            rows.append(
                {
                    "profile": prof.name,
                    "quant": prof.quant,
                    "grad_ckpt": ckpt,
                    "device_gib": round(at, 2),
                    "fits": at <= vram_gib,
                    "max_ctx_len_at_bsz1": max_ctx,
                    "max_micro_bsz_at_ctx": max_bsz,
                }
            )
    return rows


def _format_plan(result: dict[str, Any]) -> str:
    est = result["estimate"]
    lines = [
        f"model      {result['model']} ({result['parameters'] / 1e9:.2f}B parameters, "
        f"{result['n_layer']} layers x {result['n_embd']})",
        f"run        profile {result['profile']} ({result['quant']}), ctx_len {result['ctx_len']}, "
        f"micro_bsz {result['micro_bsz']}, gradient checkpointing {'on' if result['grad_ckpt'] else 'off'}, "
        f"LoRA r {result['lora_r']}",
        f"GPU        peak {est['peak_gib']:.2f} GiB allocated, about {est['device_gib']:.2f} GiB on the card "
        "(with the CUDA context and torch's cache)",
    ]
    for name, value in est["terms_gib"].items():
        if value:
            lines.append(f"           {name:<22} {value:8.2f} GiB")
    lines.append(f"host RAM   about {est['host_ram_gib']:.1f} GiB to load the checkpoint")
    lines.append(f"source     coefficients: {result['coefficients_source']}")
    if result.get("vram_gib"):
        v = result["vram_gib"]
        verdict = "fits" if est["device_gib"] <= v else "does NOT fit"
        lines += ["", f"on a {v:g} GiB GPU this run {verdict}. What fits:"]
        lines.append(f"  {'profile':<14} {'ckpt':<5} {'at ask':>8}  {'max ctx (bsz 1)':>15}  {'max bsz (ctx)':>13}")
        for r in result["fit_table"]:
            mark = "" if r["fits"] else "!"
            lines.append(
                f"  {r['profile']:<14} {'on' if r['grad_ckpt'] else 'off':<5} {r['device_gib']:>7.1f}G{mark:<1} "
                f"{r['max_ctx_len_at_bsz1'] or '-':>15}  {r['max_micro_bsz_at_ctx'] or '-':>13}"
            )
        lines.append("  (! = over the card; sizes are predictions, keep a margin for the desktop's own VRAM use)")
    return "\n".join(lines)


_NAMES = {
    "w_bf16": "base weights (bf16)",
    "w_int8": "base weights (int8)",
    "w_nf4": "base weights (nf4)",
    "other": "emb/head/small params",
    "lora": "LoRA + Adam state",
    "act": "activations",
    "ckpt": "checkpointed inputs",
    "int8_act": "int8 layer inputs",
    "logit": "logits + loss",
    "dequant": "dequant buffer",
    "fixed": "workspaces",
}


def make_plan(
    model: str,
    profile: str,
    ctx_len: int,
    micro_bsz: int,
    grad_ckpt: bool,
    vram_gib: float | None,
    lora_r: int | None = None,
    coeffs: Coefficients | None = None,
    root: Path | None = None,
) -> dict[str, Any]:
    """Everything `rwkv1c plan` prints, as a dict."""
    problems = []
    if ctx_len <= 0:
        problems.append(f"--ctx-len {ctx_len}: must be positive")
    if micro_bsz <= 0:
        problems.append(f"--micro-bsz {micro_bsz}: must be positive")
    if vram_gib is not None and vram_gib <= 0:
        problems.append(f"--vram {vram_gib}: must be positive (GiB)")
    if lora_r is not None and lora_r <= 0:
        problems.append(f"--lora-r {lora_r}: must be positive")
    if problems:
        raise UserError("invalid plan arguments:\n" + "\n".join(f"  - {p}" for p in problems))
    coeffs = coeffs or load_coefficients()
    info = resolve_model(model, root)
    prof = resolve_profile(profile, root)
    if lora_r:
        prof = replace(prof, lora_r=lora_r)
    run = prof.run(ctx_len, micro_bsz, grad_ckpt)
    est = estimate(info.shape, run, coeffs, info.checkpoint_bytes)
    result: dict[str, Any] = {
        "model": info.name,
        "parameters": info.shape.n_params,
        "n_layer": info.shape.n_layer,
        "n_embd": info.shape.n_embd,
        "profile": prof.name,
        "quant": prof.quant,
        "lora_r": prof.lora_r,
        "ctx_len": ctx_len,
        "micro_bsz": micro_bsz,
        "grad_ckpt": grad_ckpt,
        "estimate": {
            "peak_gib": round(est.peak_gib, 3),
            "device_gib": round(est.device_gib, 3),
            "host_ram_gib": round(est.host_ram_gib, 2),
            "terms_gib": {_NAMES[k]: round(v / GIB, 3) for k, v in est.terms.items()},
        },
        "coefficients_source": coeffs.source,
        "vram_gib": vram_gib,
    }
    if vram_gib:
        profiles = [resolve_profile(n, root) for n in profile_names(root)]
        if lora_r:
            profiles = [replace(p, lora_r=lora_r) for p in profiles]
        result["fit_table"] = fit_table(info.shape, profiles, coeffs, vram_gib, ctx_len, micro_bsz)
    return result


def plan(
    *,
    model: str | None = None,
    profile: str | None = None,
    ctx_len: int | None = None,
    micro_bsz: int | None = None,
    vram: float | None = None,
    grad_ckpt: bool | None = None,
    lora_r: int | None = None,
    json: bool = False,
) -> None:
    """Predict peak GPU memory and host RAM of a fine-tuning run, and what fits on a GPU.

    The numbers come from an analytical memory model (weights, LoRA and Adam state, activations with or
    without gradient checkpointing, logits, CUDA context) whose coefficients live in
    rwkv1c/assets/vram_calibration.json; the file says whether they are measured or first-principles.

    Args:
        model: a preset name (configs/model/) or a .pth checkpoint; default: MODEL_PRESET of the workspace.
        profile: training profile (configs/profile/) or a quantisation (bf16, int8, nf4); default: PROFILE.
        ctx_len: tokens per sequence; default: the profile's CTX_LEN.
        micro_bsz: sequences per step on the GPU; default: the profile's MICRO_BSZ.
        vram: GPU memory in GiB to plan for; default: GPU 0 from nvidia-smi, if there is one.
        grad_ckpt: gradient checkpointing (recompute each block in the backward pass); default: the profile's.
        lora_r: LoRA rank; default: the profile's.
        json: print JSON instead of text.
    """
    from rwkv1c.config import load_workspace

    ws = load_workspace()
    prof = resolve_profile(profile or ws.profile)
    vram_gib = vram if vram is not None else detect_vram_gib()
    result = make_plan(
        model or ws.model_preset,
        prof.name,
        prof.ctx_len if ctx_len is None else ctx_len,
        prof.micro_bsz if micro_bsz is None else micro_bsz,
        prof.grad_ckpt if grad_ckpt is None else grad_ckpt,
        vram_gib,
        lora_r,
    )
    print(jsonlib.dumps(result, indent=2) if json else _format_plan(result))
