"""The memory model: peak GPU memory and host RAM of a fine-tuning run, predicted before it starts (`rwkv1c plan`).

An analytical model with one small table of coefficients (`assets/vram_calibration.json`):

    GPU peak (what torch.cuda.max_memory_allocated reports) =
        quantised linears      n_quant   x bytes/param of the profile (none: bf16 2, int8 ~1, NF4 ~0.52)
      + other weights          n_other   x 2            (emb, head, norms, time-mix vectors, low-rank paths)
      + LoRA training state    n_lora    x 16           (fp32 weight, grad, Adam m and v)
      + activations            tokens x C x (n_layer x act_bytes)              without checkpointing
                               tokens x C x (n_layer x ckpt_bytes + act_bytes) with (one block recomputed)
      + loss                   min(tokens, 1024) x vocab x logit_bytes   (one cross-entropy chunk's fp32
                               logits, softmax and bf16 copy: training never holds all the logits)
      + dequantisation buffer  the largest quantised matrix in bf16 (QLoRA only)
      + fixed                  allocator / cuBLAS / kernel workspaces

    on the card = peak x reserve_factor + cuda_context_gib   (torch's cache and the CUDA context)
    host RAM    = host_fixed_gib + checkpoint bytes x host_ckpt_factor   (mmap load, one copy)

`calibrate()` refits the uncertain coefficients from measured peaks, so calibration is a data change.
"""

from __future__ import annotations

import json as jsonlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rwkv1c.config import BLOCK_LINEARS, QUANTS, Quant
from rwkv1c.errors import UserError
from rwkv1c.model.config import ModelConfig
from rwkv1c.train.loss import CE_CHUNK

GIB = 2**30
DEFAULT_LORA_R = 32
# a step replayed from a CUDA graph peaked 6-12% above the eager step on an H200 (1.5B, ctx 1024 / 4096)
GRAPH_ACT_SHARE = 0.12
GRAPH_FIXED_GIB = 0.1
CALIBRATION_FILE = Path(__file__).resolve().parents[1] / "assets" / "vram_calibration.json"


@dataclass(frozen=True)
class Coefficients:
    """The per-term numbers of the memory model (`assets/vram_calibration.json`)."""

    bytes_per_param: Mapping[str, float] = field(default_factory=lambda: {"none": 2.0, "int8": 1.0, "nf4": 0.516})
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
    lora_targets: tuple[str, ...] = BLOCK_LINEARS
    train_extra: tuple[str, ...] = ()
    full: bool = False  # METHOD=full: every parameter trains (fp32 weight, grad, Adam m and v)
    graphs: bool = False  # the step is replayed from a CUDA graph (CUDA_GRAPHS)


@dataclass(frozen=True)
class Estimate:
    """Predicted memory of one configuration, with its terms (bytes)."""

    terms: dict[str, float]
    peak_gib: float
    device_gib: float
    host_ram_gib: float

    def fits(self, vram_gib: float) -> bool:
        return self.device_gib <= vram_gib


def _features(shape: ModelConfig, run: RunShape) -> dict[str, float]:
    """Each term's multiplier of its coefficient: prediction = sum(feature x coefficient)."""
    tokens = run.ctx_len * run.micro_bsz
    quantised = run.quant != "none"
    n_quant = shape.linear_params
    act_layers = 1 if run.grad_ckpt else shape.n_layer
    extra = sum(shape.group_params(g) for g in run.train_extra)  # trained in fp32: counted with the LoRA state
    if run.full:  # every weight is training state (its fp32 copy is one of the 16 bytes); nothing frozen
        n_quant, extra = 0, shape.n_params
    return {
        f"w_{run.quant}": float(n_quant),
        "other": float(shape.n_params - n_quant - extra),
        "lora": float((0 if run.full else shape.lora_params(run.lora_r, run.lora_targets)) + extra),
        "act": float(tokens * shape.n_embd * act_layers),
        "ckpt": float(tokens * shape.n_embd * shape.n_layer) if run.grad_ckpt else 0.0,
        "int8_act": float(tokens * shape.n_embd * shape.n_layer) if run.quant == "int8" else 0.0,
        "logit": float(min(tokens, CE_CHUNK) * shape.vocab_size),
        "dequant": float(shape.largest_linear * 2) if quantised else 0.0,
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


def estimate(
    shape: ModelConfig, run: RunShape, coeffs: Coefficients, checkpoint_bytes: float | None = None
) -> Estimate:
    """Predicted peaks of one configuration."""
    feats = _features(shape, run)
    vec = _coef_vector(coeffs)
    terms = {name: feats[name] * vec[name] for name in feats}
    if run.graphs:  # the captured step's pool and fixed buffers, above what the eager step frees as it goes
        terms["graph"] = GRAPH_ACT_SHARE * (terms["act"] + terms["ckpt"] + terms["int8_act"]) + GRAPH_FIXED_GIB * GIB
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
    lora_targets: tuple[str, ...] = BLOCK_LINEARS
    train_extra: tuple[str, ...] = ()
    full: bool = False
    cuda_graphs: str = "auto"
    lora_dropout: float = 0.0

    def run(self, ctx_len: int | None = None, micro_bsz: int | None = None, grad_ckpt: bool | None = None) -> RunShape:
        """The configuration on one GPU, replayed from a CUDA graph where CUDA_GRAPHS would replay it."""
        from rwkv1c.train.step import use_cuda_graphs

        ctx = self.ctx_len if ctx_len is None else ctx_len
        bsz = self.micro_bsz if micro_bsz is None else micro_bsz
        graphs = use_cuda_graphs(self.cuda_graphs, "cuda", 1, self.quant, self.lora_dropout, ctx * bsz)
        return RunShape(
            self.quant,
            ctx,
            bsz,
            self.grad_ckpt if grad_ckpt is None else grad_ckpt,
            self.lora_r,
            self.lora_targets,
            self.train_extra,
            self.full,
            graphs,
        )


def resolve_profile(name: str, root: Path | None = None) -> ProfileInfo:
    """`configs/profile/<name>.env` read as the training settings, or a bare quantisation: none, int8, nf4."""
    from rwkv1c.config import TrainConfig, from_mapping, read_env_file, workspace_root

    path = (root or workspace_root()) / "configs" / "profile" / f"{name}.env"
    if path.is_file():
        cfg = from_mapping(TrainConfig, read_env_file(path), origin=str(path))
    elif name in QUANTS:
        cfg = TrainConfig(quant=name)  # type: ignore[arg-type]
    else:
        raise UserError(
            f"unknown profile {name!r}: no configs/profile/{name}.env",
            hint=f"choose one of: {', '.join(profile_names(root))} (or a bare quantisation: none, int8, nf4)",
        )
    return ProfileInfo(
        name=name,
        quant=cfg.quant,
        lora_r=cfg.lora_r,
        grad_ckpt=cfg.grad_ckpt,
        ctx_len=cfg.ctx_len,
        micro_bsz=cfg.micro_bsz,
        lora_targets=tuple(cfg.lora_targets),
        train_extra=tuple(cfg.train_extra),
        full=cfg.method == "full",
        cuda_graphs=cfg.cuda_graphs,
        lora_dropout=cfg.lora_dropout,
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
    shape: ModelConfig
    checkpoint_bytes: float


def shape_from_checkpoint(path: Path) -> ModelConfig:
    """Read the sizes from a `.pth` (memory-mapped, nothing loaded into RAM)."""
    from rwkv1c.model.checkpoint import load_checkpoint

    return ModelConfig.from_state_dict(load_checkpoint(path))


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
    shape = ModelConfig(preset.n_layer, preset.n_embd)  # the released low-rank sizes, 4x FFN
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


def _row_inputs(row: Measured, root: Path | None) -> tuple[ModelConfig, RunShape]:
    info = resolve_model(row.preset, root)
    prof = resolve_profile(row.profile, root)
    if row.lora_r:
        prof = replace(prof, lora_r=row.lora_r)
    # the measured table (train_vram.json) is of eager steps
    return info.shape, replace(prof.run(row.ctx_len, row.micro_bsz, row.grad_ckpt), graphs=False)


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

    The fit starts from the first-principles coefficients, never from the shipped table, so the shipped
    calibration is a pure function of the measured table it came from.

    Each row: preset, profile, ctx_len, micro_bsz, grad_ckpt, peak_gib (torch.cuda.max_memory_allocated in GiB),
    optionally lora_r. Prints predicted vs measured for every row and the largest relative error.
    """
    data = jsonlib.loads(Path(measured).read_text(encoding="utf-8"))
    rows = data["rows"] if isinstance(data, dict) else data
    result = calibrate(rows, Coefficients())  # from first principles: the same table always gives the same fit
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


# ---------------------------------------------------------------------------------------------- what fits


CTX_CHOICES = (256, 512, 1024, 2048, 4096, 8192, 16384)
BSZ_CHOICES = (1, 2, 4, 8, 16, 32)


def detect_vram_gib() -> float | None:
    """Total memory of GPU 0 from nvidia-smi (no torch import), or None.

    Every nvidia-smi on PATH and WSL2's own is tried until one lists a GPU: a broken Linux-driver copy first on
    PATH (a common WSL mistake) must not hide the card.
    """
    from rwkv1c.machine.nvidia import query_gpus

    gpus = query_gpus().gpus
    return gpus[0].memory_total_mib / 1024 if gpus else None


def fit_table(
    shape: ModelConfig,
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


_NAMES = {
    "w_none": "base weights (bf16)",
    "w_int8": "base weights (int8)",
    "w_nf4": "base weights (nf4)",
    "other": "emb/head/small params",
    "lora": "trained + Adam state",
    "act": "activations",
    "ckpt": "checkpointed inputs",
    "int8_act": "int8 layer inputs",
    "logit": "logits + loss",
    "dequant": "dequant buffer",
    "fixed": "workspaces",
    "graph": "CUDA graph's pool",
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
        "method": "full" if prof.full else "lora",
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


# ---------------------------------------------------------------------------------------------- inference

# Bytes per parameter of the stored block linears at inference: fp16; int8 with one fp32 scale per output
# channel; NF4 with double-quantised block scales (bitsandbytes: 64-value blocks).
INFERENCE_BYTES = {"none": 2.0, "int8": 1.0, "nf4": 0.5 + 1 / 64 + 4 / (64 * 256)}
# live bytes per prefill token and unit of width (one layer at a time: the projections, fla's chunk states,
# the FFN's hidden layer); fitted to H200 peaks of 1.5B (4096 tokens a call) and 7.2B (2048 a call)
PREFILL_ACT_BYTES = 190.0
INFERENCE_FIXED_GIB = 0.1  # cuBLAS / Triton workspaces


@dataclass(frozen=True)
class InferenceEstimate:
    """Predicted GPU memory of generate / chat / serve for one model, quantisation and batch (bytes)."""

    terms: dict[str, float]
    peak_gib: float
    device_gib: float

    def fits(self, vram_gib: float) -> bool:
        return self.device_gib <= vram_gib


def inference_estimate(
    cfg: ModelConfig, quant: Quant, batch: int, *, quant_head: bool = False, coeffs: Coefficients | None = None
) -> InferenceEstimate:
    """Weights by quantisation + the recurrent state of `batch` sequences + one prefill call + workspaces."""
    from rwkv1c.infer.engine import prefill_budget

    coeffs = coeffs or load_coefficients()
    head = cfg.vocab_size * cfg.n_embd
    other = cfg.n_params - cfg.linear_params - head
    state = cfg.n_layer * (2 * cfg.n_embd * 2 + cfg.n_head * cfg.head_size**2 * 4)  # shifts fp16, WKV fp32
    prefill = prefill_budget(cfg.n_embd, "cuda")
    widest = max(cfg.d_decay, cfg.d_aaa, cfg.d_mv, cfg.d_gate)
    terms = {
        "weights": cfg.linear_params * INFERENCE_BYTES[quant] + other * 2.0,
        "head": head * (INFERENCE_BYTES[quant] if quant_head else 2.0),
        # the fused decode step's stacked copies of the four low-rank paths, padded to the widest
        "decoder": float(cfg.n_layer * 2 * 4 * cfg.n_embd * widest * 2),
        "state": float(batch * state),
        "logits": float(batch * cfg.vocab_size * 4 * 3),  # the slot logits, sampling's probabilities and sort
        "prefill": float(prefill * cfg.n_embd * PREFILL_ACT_BYTES),
        # a quantised matrix read by many tokens at once is dequantised to fp16 first (two copies in flight)
        "dequant": float(2 * cfg.largest_linear * 2) if quant != "none" else 0.0,
        "fixed": INFERENCE_FIXED_GIB * GIB,
    }
    peak = sum(terms.values()) / GIB
    return InferenceEstimate(terms, peak, peak * coeffs.reserve_factor + coeffs.cuda_context_gib)


def inference_table(
    cfg: ModelConfig, vram_gib: float | None, batches: Sequence[int] = (1, 16, 64), quant_head: bool = False
) -> list[dict[str, Any]]:
    """For every quantisation and batch: the predicted memory on the card and whether it fits."""
    rows = []
    for quant in QUANTS:
        for b in batches:
            est = inference_estimate(cfg, quant, b, quant_head=quant_head)
            rows.append(
                {
                    "quant": quant,
                    "batch": b,
                    "device_gib": round(est.device_gib, 2),
                    "fits": None if vram_gib is None else est.fits(vram_gib),
                }
            )
    return rows


def check_inference_fits(model: Path, quant: Quant, batch: int, *, quant_head: bool = False) -> None:
    """Before loading on a GPU: a clear message (and what to choose instead) when the model will not fit
    in the free memory of the current GPU, rather than an out-of-memory error half-way through the load."""
    import torch

    if not torch.cuda.is_available():
        return
    free, _total = torch.cuda.mem_get_info()
    free_gib = free / GIB
    cfg = shape_from_checkpoint(model)
    need = inference_estimate(cfg, quant, batch, quant_head=quant_head).device_gib
    if need <= free_gib:
        return
    fitting = [
        (q, b)
        for q in QUANTS
        for b in (batch, 16, 4, 1)
        if b <= batch and inference_estimate(cfg, q, b, quant_head=quant_head).device_gib <= free_gib
    ]
    hint = (
        f"use --quant {fitting[0][0]}"
        + (f" with --batch-size / --max-batch {fitting[0][1]}" if fitting[0][1] != batch else "")
        if fitting
        else "no quantisation fits this GPU's free memory: use a smaller model, or --device cpu"
    )
    raise UserError(
        f"{model.name} needs about {need:.1f} GiB on the GPU with --quant {quant} and batch {batch}, "
        f"but only {free_gib:.1f} GiB are free",
        hint=hint + " (`rwkv1c plan --inference` shows every choice; close other programs that hold VRAM)",
    )


def inference_settings(model: Path, quant: Quant | None, max_batch: int, device: str) -> tuple[Quant, bool]:
    """The quantisation an inference command runs with (the flag, else QUANT of the workspace) and whether
    the head is quantised too (QUANT_HEAD); on a GPU, checked against its free memory before any load."""
    from rwkv1c.config import load_workspace

    ws = load_workspace()
    chosen = quant or ws.quant
    if device != "cpu" and Path(model).is_file():
        check_inference_fits(Path(model), chosen, max_batch, quant_head=ws.quant_head)
    return chosen, ws.quant_head


# ---------------------------------------------------------------------------------------------- CPU training

CPU_ACT_BYTES = 1100.0  # host bytes per token, unit of width and layer of a CPU (fp32, chunked WKV) step
CPU_FIXED_GIB = 1.0  # the interpreter, torch, the tokenizer


def cpu_training_gib(cfg: ModelConfig, tokens: int, logit_positions: int = 1024) -> float:
    """Predicted host RAM of one CPU training step: fp32 weights, activations of `tokens` (micro_bsz x
    ctx_len) tokens through every layer, one cross-entropy chunk's logits (measured on x86-64: about 1,100
    bytes per token, unit of width and layer, the chunked WKV's pair tensors most of it)."""
    activations = tokens * cfg.n_embd * cfg.n_layer * CPU_ACT_BYTES
    logits = min(tokens, logit_positions) * cfg.vocab_size * 4 * 3
    return CPU_FIXED_GIB + (cfg.n_params * 4 + activations + logits) / GIB


def available_ram_gib() -> float | None:
    """MemAvailable of /proc/meminfo in GiB (Linux and WSL2), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_cpu_training_fits(cfg: ModelConfig, ctx_len: int, micro_bsz: int, available: float | None) -> None:
    """Before CPU training: a clear message, with a context length that fits, when the step would not fit in
    the free RAM (the kernel's out-of-memory killer gives no message at all)."""
    if available is None:
        return
    need = cpu_training_gib(cfg, ctx_len * micro_bsz)
    if need <= 0.9 * available:
        return
    fits = [
        c
        for c in (16384, 8192, 4096, 2048, 1024, 512, 256, 128)
        if cpu_training_gib(cfg, c * micro_bsz) <= 0.9 * available
    ]
    raise UserError(
        f"training on the CPU with ctx_len {ctx_len} and micro_bsz {micro_bsz} needs about {need:.1f} GiB of RAM, "
        f"but {available:.1f} GiB are available",
        hint=(f"use --ctx-len {fits[0]} or less" if fits else "use a smaller model")
        + " (memory grows with ctx_len x micro_bsz), or train on a GPU; under WSL2 more RAM can be given to Linux "
        "in %UserProfile%\\.wslconfig",
    )
