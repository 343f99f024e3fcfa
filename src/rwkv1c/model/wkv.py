"""The RWKV-7 WKV operator: a generalised delta rule with per-channel decay.

For each head (head size N), with the state S of shape (N_v, N_k) = (N, N) in fp32:

    S_t = S_{t-1} @ (diag(w_t) + a_t b_t^T) + v_t k_t^T        y_t = S_t @ r_t

where w_t in (0, 1) is the decay, a_t = -kappa_hat_t (removal key) and b_t = kappa_hat_t * iclr_t.
The state layout (B, H, N_v, N_k) is the official one (the `rwkv` package and BlinkDL's kernels).

Three implementations, chosen when called (never at import):
- `wkv_reference`: the recurrence token by token in plain PyTorch. Slow; the ground truth.
- `wkv_chunked`: an exact chunk-parallel form in plain PyTorch (CPU training / prefill); within a
  chunk the delta-rule corrections are solved with a unit-triangular system, across chunks the state
  is carried with two matmuls.
- `wkv_fla`: flash-linear-attention's Triton `chunk_rwkv7` (GPU, forward and backward); document
  resets go in as `soft_reset`, so no call waits for the GPU and shapes never depend on the data.

All take r, k, v, a, b of shape (B, T, H, N), the log-decay `log_w` (B, T, H, N) (log_w = log w < 0),
an optional initial state (B, H, N, N) and an optional `reset` (B, T) bool mask: where True, the state
is zeroed before that token (a new document starts). They return y (B, T, H, N) in the input dtype
and the final state (B, H, N, N) in fp32.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

WkvImpl = Literal["auto", "reference", "chunked", "fla"]
CHUNK = 16  # 0.545**16 > 5e-5: cumulative decays inside a chunk stay well inside fp32 range


def wkv_reference(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token recurrence, fp32 state. Shapes as in the module docstring."""
    B, T, H, N = r.shape
    dtype = r.dtype
    S = r.new_zeros(B, H, N, N, dtype=torch.float32) if state is None else state.float()
    w = log_w.float().exp()
    r, k, v, a, b = (t.float() for t in (r, k, v, a, b))
    ys = []
    for t in range(T):
        if reset is not None:
            S = S * (~reset[:, t]).float().view(B, 1, 1, 1)
        sa = S @ a[:, t].unsqueeze(-1)  # (B, H, N, 1): the part of the state that the removal key reads
        S = S * w[:, t].unsqueeze(-2) + sa @ b[:, t].unsqueeze(-2) + v[:, t].unsqueeze(-1) @ k[:, t].unsqueeze(-2)
        ys.append((S @ r[:, t].unsqueeze(-1)).squeeze(-1))  # (B, H, N)
    y = torch.stack(ys, dim=1) if ys else r.new_zeros(B, 0, H, N)
    return y.to(dtype), S


def _chunk_masks(reset: torch.Tensor | None, B: int, n: int, L: int, device: torch.device) -> tuple:
    """What a document start cuts inside each chunk.

    Returns the pair masks (strict s < t, inclusive s <= t) shaped to broadcast over (B, H, n, L_t, L_s, N)
    and three factors: position t still sees the chunk's initial state (B, 1, n, L, 1); position s still
    reaches the chunk's end (B, 1, n, L, 1); the initial state reaches the end (B, 1, n, 1). Without
    resets the factors are 1.
    """
    strict = torch.ones(L, L, dtype=torch.bool, device=device).tril(-1)
    incl = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    if reset is None:
        return strict.view(1, 1, 1, L, L, 1), incl.view(1, 1, 1, L, L, 1), 1.0, 1.0, 1.0
    # cr[t] = resets at chunk positions <= t; s reaches t (s <= t) iff no reset in (s, t]  <=>  cr[t] == cr[s]
    cr = reset.view(B, n, L).long().cumsum(-1).unsqueeze(1)  # (B, 1, n, L)
    same = cr.unsqueeze(-1) == cr.unsqueeze(-2)  # (B, 1, n, L, L)
    from_start = cr == 0
    alive = cr == cr[..., -1:]
    return (
        (same & strict).unsqueeze(-1),
        (same & incl).unsqueeze(-1),
        from_start.unsqueeze(-1).float(),
        alive.unsqueeze(-1).float(),
        from_start[..., -1:].float(),
    )


def wkv_chunked(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact chunk-parallel WKV (differentiable). Shapes as in the module docstring.

    Inside a chunk of length L starting from state S0, write u_t = S_{t-1} a_t. Unrolling gives
        u_t = S0 (d_{t-1} * a_t) + sum_{s<t} [u_s (b_s . a_t d_{t-1}/d_s) + v_s (k_s . a_t d_{t-1}/d_s)]
    with d_t the cumulative decay, i.e. (I - M_ab) U = A~ S0^T + M_ak V: a unit lower-triangular solve.
    Every decay ratio is formed as exp(cumlog_t - cumlog_s) with t >= s, so nothing overflows.
    """
    B, T, H, N = r.shape
    dtype = r.dtype
    L = chunk
    pad = (-T) % L
    f32 = [t.float() for t in (r, log_w, k, v, a, b)]
    if pad:
        # padded steps: no decay (log 0), no input; they do not touch the state
        f32 = [torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad)) for t in f32]
        if reset is not None:
            reset = torch.nn.functional.pad(reset, (0, pad))
    n = (T + pad) // L
    # (B, H, n, L, N)
    rr, lw, kk, vv, aa, bb = (t.view(B, n, L, H, N).permute(0, 3, 1, 2, 4) for t in f32)
    cl = lw.cumsum(-2)  # log d_t, inclusive
    cl_prev = cl - lw  # log d_{t-1}
    strict, incl, from_start, alive, end_from_start = _chunk_masks(reset, B, n, L, r.device)

    def pair(q: torch.Tensor, q_log: torch.Tensor, s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # M[t, s] = sum_c q_t[c] s_s[c] exp(q_log_t[c] - cl_s[c]), only where mask (t >= s so exponent <= 0)
        diff = q_log.unsqueeze(-2) - cl.unsqueeze(-3)  # (B, H, n, L_t, L_s, N)
        decay = torch.where(mask, diff, torch.full_like(diff, -torch.inf)).exp()
        return torch.einsum("bhntc,bhnsc,bhntsc->bhnts", q, s, decay)

    m_ab = pair(aa, cl_prev, bb, strict)
    m_ak = pair(aa, cl_prev, kk, strict)
    m_rb = pair(rr, cl, bb, incl)
    m_rk = pair(rr, cl, kk, incl)
    a_tilde = aa * cl_prev.exp() * from_start  # (B, H, n, L, N): a_t d_{t-1}, zero after a reset
    r_tilde = rr * cl.exp() * from_start
    eye = torch.eye(L, device=r.device, dtype=torch.float32)
    solve = torch.linalg.solve_triangular(
        eye - m_ab, torch.cat([a_tilde, m_ak @ vv], dim=-1), upper=False, unitriangular=True
    )
    u_from_state, u_const = solve[..., :N], solve[..., N:]  # U = u_from_state @ S0^T + u_const
    y_from_state = r_tilde + m_rb @ u_from_state  # Y = y_from_state @ S0^T + y_const
    y_const = m_rb @ u_const + m_rk @ vv
    # end of chunk: S_L = S0 @ transition + addition
    to_end = (cl[..., -1:, :] - cl).exp() * alive  # d_L / d_s where s still reaches the end  (B, H, n, L, N)
    b_end, k_end = bb * to_end, kk * to_end
    d_end = cl[..., -1, :].exp() * end_from_start
    transition = torch.diag_embed(d_end) + u_from_state.transpose(-1, -2) @ b_end  # (B, H, n, N_k, N_k)
    addition = u_const.transpose(-1, -2) @ b_end + vv.transpose(-1, -2) @ k_end  # (B, H, n, N_v, N_k)

    S = r.new_zeros(B, H, N, N, dtype=torch.float32) if state is None else state.float()
    ys = []
    for c in range(n):
        ys.append(y_from_state[:, :, c] @ S.transpose(-1, -2) + y_const[:, :, c])  # (B, H, L, N)
        S = S @ transition[:, :, c] + addition[:, :, c]
    y = torch.stack(ys, dim=2).view(B, H, n * L, N).permute(0, 2, 1, 3)[:, :T]
    return y.to(dtype), S


# log-decay that stands for a document start: w = e^-20 ~ 2e-9 wipes the state, as a reset does, yet keeps
# the kernel's in-chunk cumulative decays finite (its exponents are differences of cumsums, never positive)
RESET_LOG_DECAY = -20.0


def soft_reset(log_w: torch.Tensor, a: torch.Tensor, reset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The state zeroed before every token where `reset` (B, T) is True, with no change of shape.

    At such a token t the recurrence S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T keeps only
    v_t k_t^T when w_t ~ 0 and a_t = 0: the state a reset would have zeroed contributes e^-20 of itself
    (a 2e-9 relative remainder, far below bf16's resolution) and its gradients are exactly zero there, as
    with a true reset. Unlike fla's varlen interface this needs no segment list: no host sync, static
    shapes, so a forward and backward can be captured in a CUDA graph.
    """
    mask = reset.unsqueeze(-1).unsqueeze(-1)  # (B, T, 1, 1)
    log_w = log_w.masked_fill(mask, RESET_LOG_DECAY)
    return log_w, a.masked_fill(mask, 0.0)


def wkv_fla(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """flash-linear-attention's `chunk_rwkv7` (Triton, CUDA only). Shapes as in the module docstring.

    fla keeps the state as (B, H, N_k, N_v), the transpose of ours. Document resets go in as
    `soft_reset` (decay ~0 and no removal term at the first token of a document), so every row is one
    sequence of the batch and nothing here waits for the GPU.
    """
    from fla.ops.rwkv7 import chunk_rwkv7

    # fla's kernels need r, k, v, a, b in one dtype. They can arrive mixed (an fp32 model under autocast:
    # bf16 matmul outputs next to fp32 elementwise results), so they run in the 16-bit compute dtype;
    # the log-decay stays fp32.
    compute = _compute_dtype(r, k, v, a, b)
    r, k, v, a, b = (t.to(compute) for t in (r, k, v, a, b))
    log_w = log_w.float()
    if reset is not None:
        log_w, a = soft_reset(log_w, a, reset)
    h0 = None if state is None else state.float().transpose(-1, -2).contiguous()
    y, s = chunk_rwkv7(r, log_w, k, v, a, b, scale=1.0, initial_state=h0, output_final_state=True)
    return y, s.transpose(-1, -2).float()


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on, else the 16-bit dtype among the inputs, else theirs."""
    device = tensors[0].device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    half = [t.dtype for t in tensors if t.dtype in (torch.bfloat16, torch.float16)]
    return half[0] if half else tensors[0].dtype


@functools.cache
def fla_available() -> bool:
    """True when the Triton kernel can run here (CUDA device and `fla` importable); checked once, when asked."""
    if not torch.cuda.is_available():
        return False
    try:
        import fla.ops.rwkv7  # noqa: F401
    except Exception:
        return False
    return True


def resolve_impl(impl: WkvImpl, on_cuda: bool, T: int) -> WkvImpl:
    """What "auto" means for T tokens here: fla on CUDA when installed, else chunked (T > 1) or reference."""
    if impl != "auto":
        return impl
    if on_cuda and fla_available():
        return "fla"
    return "chunked" if T > 1 else "reference"


def wkv(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
    impl: WkvImpl = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch to an implementation. "auto": fla on CUDA when installed, else chunked (T > 1) or reference."""
    impl = resolve_impl(impl, r.is_cuda, r.shape[1])
    if impl == "fla":
        return wkv_fla(r, log_w, k, v, a, b, state, reset)
    if impl == "chunked":
        return wkv_chunked(r, log_w, k, v, a, b, state, reset)
    if impl == "reference":
        return wkv_reference(r, log_w, k, v, a, b, state, reset)
    raise ValueError(f"unknown WKV implementation {impl!r}")
