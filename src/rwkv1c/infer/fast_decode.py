"""The one-token decode step, fast: fused per-layer kernels and CUDA graphs at fixed batch buckets.

`decode_step_torch` is the step in plain PyTorch: the T=1 case of `model.forward` written for one token
(no time axis, no document resets), its CPU path and its reference; the tests hold the two equal.
`decode_step_triton` computes the same function on CUDA with fused Triton kernels:

- `add_ln_mix`: residual add + LayerNorm + token shift + the six (or one) token-shift mixes;
- `tmix_step`: everything of the time mix between the projections, for one (row, head): decay,
  in-context rate, value residual, removal key, the WKV state update (fp32, in place), GroupNorm
  of the head, the r.k bonus and the output gate;
- `lora_act`: tanh / sigmoid between the two stages of the low-rank paths;
- `relu_sq`: the channel mix's squared ReLU.

Every projection (r, k, v, output, the FFN, the head) is the model's own module call, so a model
whose linears carry unmerged LoRA adapters decodes through the same path. Kernels are compiled on
first use, never at import. `FastDecoder` captures the whole step in a CUDA graph per batch bucket
(1, 2, 4, ... up to the engine's capacity) over the engine's slot state, so a decode step is one
graph replay.

State: att_shift, ffn_shift (L, rows, C) in the model dtype; wkv (L, rows, H, N, N) fp32. The step
updates rows 0..b-1 in place.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from rwkv1c.model.rwkv7 import RWKV7, RWKVState

Kernels = Literal["auto", "torch", "triton"]
NEG_EXP_HALF = -math.exp(-0.5)  # log w = -e^-0.5 * sigmoid(.)


@torch.no_grad()
def decode_step_torch(
    model: RWKV7,
    tokens: torch.Tensor,  # (b,) long
    att_shift: torch.Tensor,  # (L, b, C), updated in place
    ffn_shift: torch.Tensor,  # (L, b, C), updated in place
    wkv: torch.Tensor,  # (L, b, H, N, N) fp32, updated in place
) -> torch.Tensor:
    """Logits (b, V) fp32 for one token per row; the T=1 case of `RWKV7.forward`, in plain PyTorch."""
    x = model.emb(tokens)  # (b, C)
    b, C = x.shape
    v_first: torch.Tensor | None = None
    blocks: list[Any] = list(model.blocks)
    for i, blk in enumerate(blocks):
        att, ffn = blk.att, blk.ffn
        H, N = att.n_head, att.head_size
        if i == 0:
            x = blk.ln0(x)
        xa = blk.ln1(x)
        xx = att_shift[i].to(x.dtype) - xa
        att_shift[i].copy_(xa)
        xr, xw, xk, xv, xa_, xg = (xa + xx * m.view(C) for m in (att.x_r, att.x_w, att.x_k, att.x_v, att.x_a, att.x_g))
        r, k, v = att.receptance(xr), att.key(xk), att.value(xv)
        log_w = NEG_EXP_HALF * torch.sigmoid((att.w0.view(C) + torch.tanh(xw @ att.w1) @ att.w2).float())
        a = torch.sigmoid(att.a0.view(C) + (xa_ @ att.a1) @ att.a2)
        g = torch.sigmoid(xg @ att.g1) @ att.g2
        if i == 0:
            v_first = v
        else:
            assert v_first is not None
            v = v + (v_first - v) * torch.sigmoid(att.v0.view(C) + (xv @ att.v1) @ att.v2)
        kk = F.normalize((k * att.k_k.view(C)).view(b, H, N), dim=-1, p=2.0, eps=1e-12)
        k = k * (1 + (a - 1) * att.k_a.view(C))
        # WKV, one step (fp32): S <- S diag(w) + (S a) b^T + v k^T with a = -kk, b = kk * iclr; y = S r
        S = wkv[i]
        kf, vf, rf = k.float().view(b, H, N), v.float().view(b, H, N), r.float().view(b, H, N)
        sa = S @ (-kk.float()).unsqueeze(-1)  # (b, H, N, 1)
        S_new = (
            S * log_w.exp().view(b, H, 1, N)
            + sa @ (kk * a.view(b, H, N)).float().unsqueeze(-2)
            + vf.unsqueeze(-1) @ kf.unsqueeze(-2)
        )
        wkv[i].copy_(S_new)
        y = (S_new @ rf.unsqueeze(-1)).view(b, C)
        y = att.ln_x(y.to(x.dtype))
        bonus = (r.view(b, H, N) * k.view(b, H, N) * att.r_k).sum(-1, keepdim=True) * v.view(b, H, N)
        x = x + att.output((y + bonus.view(b, C)) * g)
        xf = blk.ln2(x)
        xx = ffn_shift[i].to(x.dtype) - xf
        ffn_shift[i].copy_(xf)
        x = x + ffn.value(torch.relu(ffn.key(xf + xx * ffn.x_k.view(C))) ** 2)
    return model.head(model.ln_out(x)).float()


@functools.cache
def _triton_kernels() -> dict[str, Any]:
    """Define (and on first launch, compile) the Triton kernels. Called on first GPU use only."""
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["n_rows"])
    def add_ln_mix(
        X, D, LN_W, LN_B, SHIFT, MIX, OUT, n_rows, eps,
        C: tl.constexpr, BLOCK: tl.constexpr, M: tl.constexpr, HAS_D: tl.constexpr,
    ):  # fmt: skip
        # one program per row: x (+= d, written back), h = LN(x); M == 0: out = h; else shift <- h and
        # out[m] = h + (shift_old - h) * mix[m] for the M mixes
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < C
        base = row * C
        x = tl.load(X + base + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_D:
            x += tl.load(D + base + cols, mask=mask, other=0.0).to(tl.float32)
            x_q = x.to(X.dtype.element_ty)
            tl.store(X + base + cols, x_q, mask=mask)
            x = x_q.to(tl.float32)
        mean = tl.sum(x, 0) / C
        xc = tl.where(mask, x - mean, 0.0)
        var = tl.sum(xc * xc, 0) / C
        w = tl.load(LN_W + cols, mask=mask, other=0.0).to(tl.float32)
        bias = tl.load(LN_B + cols, mask=mask, other=0.0).to(tl.float32)
        h = (xc / tl.sqrt(var + eps) * w + bias).to(OUT.dtype.element_ty)
        if M == 0:
            tl.store(OUT + base + cols, h, mask=mask)
        else:
            prev = tl.load(SHIFT + base + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(SHIFT + base + cols, h.to(SHIFT.dtype.element_ty), mask=mask)
            hf = h.to(tl.float32)
            xx = prev - hf
            for m in tl.static_range(M):
                mix = tl.load(MIX + m * C + cols, mask=mask, other=0.0).to(tl.float32)
                tl.store(OUT + m * n_rows * C + base + cols, (hf + xx * mix).to(OUT.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["n_rows"])
    def tmix_step(
        R, K, V, WL, AL, VL, VF, G, W0, A0, V0, KKW, KAW, RK, LNW, LNB, S, OUT, n_rows, eps,
        C: tl.constexpr, N: tl.constexpr, HAS_VRES: tl.constexpr,
    ):  # fmt: skip
        # one program per (row, head); vectors indexed by j (key index), the state S[i, j] (i = value index)
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        j = tl.arange(0, N)
        off = b * C + h * N + j
        poff = h * N + j
        r = tl.load(R + off).to(tl.float32)
        k = tl.load(K + off).to(tl.float32)
        v = tl.load(V + off).to(tl.float32)
        w = tl.exp(
            -0.6065306597126334 * tl.sigmoid(tl.load(W0 + poff).to(tl.float32) + tl.load(WL + off).to(tl.float32))
        )
        a = tl.sigmoid(tl.load(A0 + poff).to(tl.float32) + tl.load(AL + off).to(tl.float32))
        if HAS_VRES:
            mix = tl.sigmoid(tl.load(V0 + poff).to(tl.float32) + tl.load(VL + off).to(tl.float32))
            v = v + (tl.load(VF + off).to(tl.float32) - v) * mix
        kk = k * tl.load(KKW + poff).to(tl.float32)
        kk = kk / tl.maximum(tl.sqrt(tl.sum(kk * kk, 0)), 1e-12)
        k = k * (1.0 + (a - 1.0) * tl.load(KAW + poff).to(tl.float32))
        s_ptr = S + (b * (C // N) + h) * N * N + j[:, None] * N + j[None, :]
        st = tl.load(s_ptr)
        sa = tl.sum(st * (-kk)[None, :], 1)
        st = st * w[None, :] + sa[:, None] * (kk * a)[None, :] + v[:, None] * k[None, :]
        tl.store(s_ptr, st)
        y = tl.sum(st * r[None, :], 1)
        mean = tl.sum(y, 0) / N
        yc = y - mean
        var = tl.sum(yc * yc, 0) / N
        y = yc / tl.sqrt(var + eps) * tl.load(LNW + poff).to(tl.float32) + tl.load(LNB + poff).to(tl.float32)
        y = y + tl.sum(r * k * tl.load(RK + poff).to(tl.float32), 0) * v
        g = tl.load(G + off).to(tl.float32)
        tl.store(OUT + off, (y * g).to(OUT.dtype.element_ty))

    @triton.jit(do_not_specialize=["n"])
    def lora_act(X, n, BLOCK: tl.constexpr):
        # X (4, b, D) contiguous, n = b * D: tanh on block 0 (decay path), sigmoid on block 2 (gate path)
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        w = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(X + offs, (2.0 * tl.sigmoid(2.0 * w) - 1.0).to(X.dtype.element_ty), mask=mask)  # tanh
        g = tl.load(X + 2 * n + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(X + 2 * n + offs, tl.sigmoid(g).to(X.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["n"])
    def relu_sq(X, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.maximum(tl.load(X + offs, mask=mask, other=0.0).to(tl.float32), 0.0)
        tl.store(X + offs, (x * x).to(X.dtype.element_ty), mask=mask)

    return {
        "add_ln_mix": add_ln_mix,
        "tmix_step": tmix_step,
        "lora_act": lora_act,
        "relu_sq": relu_sq,
        "next_pow2": triton.next_power_of_2,
    }


class _LayerParams:
    """Per-layer tensors the kernels read: views of the model's parameters, plus two stacked copies.

    mix6 (6, C): the six token-shift mixes, in the order w, a, g, v, r, k. lora1 (4, C, D) and
    lora2 (4, D, C): the low-rank paths of the decay, in-context rate, gate and value residual,
    zero-padded to the largest rank D, so that each stage is one batched matmul (4 launches instead
    of 10). The padding contributes exactly zero.
    """

    @torch.no_grad()
    def __init__(self, blk: Any) -> None:
        att, ffn = blk.att, blk.ffn
        C = blk.ln1.weight.shape[0]
        # order (w, a, g, v, r, k): the four low-rank inputs come first, as one contiguous (4, b, C) block
        self.mix6 = torch.cat([getattr(att, n).view(1, C) for n in ("x_w", "x_a", "x_g", "x_v", "x_r", "x_k")])
        self.mix6 = self.mix6.contiguous()
        self.ffn_mix = ffn.x_k.view(C)
        self.vec = {n: getattr(att, n).reshape(-1) for n in ("w0", "a0", "k_k", "k_a", "r_k")}
        self.v0 = att.v0.view(C) if hasattr(att, "v0") else None
        pairs = [(att.w1, att.w2), (att.a1, att.a2), (att.g1, att.g2)]
        pairs.append((att.v1, att.v2) if hasattr(att, "v1") else (att.w1[:, :0], att.w2[:0]))
        D = max(a.shape[1] for a, _ in pairs)
        w = att.w1
        self.lora1 = torch.zeros(4, C, D, device=w.device, dtype=w.dtype)
        self.lora2 = torch.zeros(4, D, C, device=w.device, dtype=w.dtype)
        for i, (a, b) in enumerate(pairs):
            self.lora1[i, :, : a.shape[1]] = a
            self.lora2[i, : b.shape[0]] = b


def _launch_add_ln_mix(
    k: dict[str, Any], x: torch.Tensor, d: torch.Tensor | None, ln: torch.nn.LayerNorm,
    shift: torch.Tensor | None, mix: torch.Tensor | None, out: torch.Tensor,
) -> None:  # fmt: skip
    b, C = x.shape
    M = 0 if mix is None else (mix.shape[0] if mix.dim() == 2 else 1)
    k["add_ln_mix"][(b,)](
        x, x if d is None else d, ln.weight, ln.bias, x if shift is None else shift, x if mix is None else mix,
        out, b, ln.eps, C=C, BLOCK=k["next_pow2"](C), M=M, HAS_D=d is not None, num_warps=4 if C <= 2048 else 8,
    )  # fmt: skip


@torch.no_grad()
def decode_step_triton(
    model: RWKV7,
    params: list[_LayerParams],
    tokens: torch.Tensor,
    att_shift: torch.Tensor,
    ffn_shift: torch.Tensor,
    wkv: torch.Tensor,
) -> torch.Tensor:
    """Same contract as `decode_step_torch`, with fused Triton kernels (CUDA only)."""
    k = _triton_kernels()
    first: Any = model.blocks[0]
    x = first.ln0(model.emb(tokens))  # (b, C), fresh: the residual stream is updated in place
    b, C = x.shape
    dtype = x.dtype
    mixed = torch.empty(6, b, C, device=x.device, dtype=dtype)
    ffn_in = torch.empty(b, C, device=x.device, dtype=dtype)
    y = torch.empty(b, C, device=x.device, dtype=dtype)
    delta: torch.Tensor | None = None
    v_first: torch.Tensor | None = None
    blocks: list[Any] = list(model.blocks)
    for i, blk in enumerate(blocks):
        att, ffn, p = blk.att, blk.ffn, params[i]
        H, N = att.n_head, att.head_size
        _launch_add_ln_mix(k, x, delta, blk.ln1, att_shift[i], p.mix6, mixed)
        r, kx, v = att.receptance(mixed[4]), att.key(mixed[5]), att.value(mixed[3])
        # the four low-rank paths (w, a, g, v) in two batched matmuls
        hidden4 = torch.bmm(mixed[:4], p.lora1)  # (4, b, D)
        n4 = hidden4[0].numel()
        k["lora_act"][(triton_cdiv(n4, 1024),)](hidden4, n4, BLOCK=1024)  # tanh (decay), sigmoid (gate)
        wl, al, gl, vl = torch.bmm(hidden4, p.lora2).unbind(0)  # (b, C) each
        if i == 0:
            v_first = v
        k["tmix_step"][(b, H)](
            r, kx, v, wl, al, vl, v_first, gl, p.vec["w0"], p.vec["a0"], p.v0 if p.v0 is not None else p.vec["a0"],
            p.vec["k_k"], p.vec["k_a"], p.vec["r_k"], att.ln_x.weight, att.ln_x.bias, wkv[i], y, b, att.ln_x.eps,
            C=C, N=N, HAS_VRES=i > 0, num_warps=4,
        )  # fmt: skip
        _launch_add_ln_mix(k, x, att.output(y), blk.ln2, ffn_shift[i], p.ffn_mix.view(1, C), ffn_in)
        hidden = ffn.key(ffn_in)
        n = hidden.numel()
        k["relu_sq"][(triton_cdiv(n, 1024),)](hidden, n, BLOCK=1024)
        delta = ffn.value(hidden)
    h = torch.empty_like(x)
    _launch_add_ln_mix(k, x, delta, model.ln_out, None, None, h)
    return model.head(h).float()


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def buckets(capacity: int) -> list[int]:
    """Batch sizes the decode step is captured at: powers of two below the capacity, and the capacity."""
    out, b = [], 1
    while b < capacity:
        out.append(b)
        b *= 2
    return [*out, capacity]


class FastDecoder:
    """Runs decode steps over an engine's slot state (rows 0..n-1 active), choosing the fastest path.

    kernels: "auto" = Triton on CUDA when importable, else plain PyTorch. cuda_graphs: None = on for
    CUDA. Graphs are captured lazily per bucket and bound to the state tensors' addresses; rows n to
    bucket-1 are computed too and must be free slots. The Triton path keeps stacked copies of the small
    per-layer vectors and low-rank matrices: make the decoder after the weights are final.
    """

    def __init__(self, model: RWKV7, *, kernels: Kernels = "auto", cuda_graphs: bool | None = None) -> None:
        self.model = model
        device = model.emb.weight.device
        self.device = device
        on_cuda = device.type == "cuda"
        if kernels == "auto":
            kernels = "triton" if on_cuda and triton_available() else "torch"
        if kernels == "triton" and not on_cuda:
            raise ValueError("the Triton decode kernels need a CUDA device")
        self.kernels = kernels
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not on_cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        self.params = [_LayerParams(blk) for blk in model.blocks] if kernels == "triton" else []
        self._graphs: dict[int, tuple[Any, torch.Tensor]] = {}
        self._graph_key: tuple[int, ...] | None = None
        self._tokens: torch.Tensor | None = None

    def eager(self, tokens: torch.Tensor, att: torch.Tensor, ffn: torch.Tensor, wkv: torch.Tensor) -> torch.Tensor:
        if self.kernels == "triton":
            return decode_step_triton(self.model, self.params, tokens, att, ffn, wkv)
        return decode_step_torch(self.model, tokens, att, ffn, wkv)

    def bucket(self, n: int, capacity: int) -> int:
        return next(b for b in buckets(capacity) if b >= n)

    def __call__(self, tokens: torch.Tensor, state: RWKVState, n: int) -> torch.Tensor:
        """Logits (n, V) fp32 for tokens (n,) fed to rows 0..n-1 of `state` (updated in place).

        With CUDA graphs the result is a view of a static buffer: use it before the next call.
        """
        with torch.inference_mode():
            return self._step(tokens, state, n)

    def _step(self, tokens: torch.Tensor, state: RWKVState, n: int) -> torch.Tensor:
        if not self.cuda_graphs:
            return self.eager(tokens[:n], state.att_shift[:, :n], state.ffn_shift[:, :n], state.wkv[:, :n])
        capacity = state.batch_size
        key = (state.att_shift.data_ptr(), state.ffn_shift.data_ptr(), state.wkv.data_ptr(), capacity)
        if key != self._graph_key:  # a new state buffer: graphs bound to the old one are useless
            self._graphs.clear()
            self._graph_key = key
            self._tokens = torch.zeros(capacity, dtype=torch.long, device=self.device)
        b = self.bucket(n, capacity)
        if b not in self._graphs:
            self._graphs[b] = self._capture(b, state)
        graph, out = self._graphs[b]
        assert self._tokens is not None
        self._tokens[:n].copy_(tokens[:n])
        graph.replay()
        return out[:n]

    def _capture(self, b: int, state: RWKVState) -> tuple[Any, torch.Tensor]:
        assert self._tokens is not None
        # warm up on scratch state (compiles kernels, sets up cuBLAS) so the live rows are untouched
        scratch = state.select(slice(0, b)).clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.eager(self._tokens[:b], scratch.att_shift, scratch.ffn_shift, scratch.wkv)
        torch.cuda.current_stream().wait_stream(stream)
        del scratch
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # a private memory pool per bucket: outputs are never shared
            out = self.eager(self._tokens[:b], state.att_shift[:, :b], state.ffn_shift[:, :b], state.wkv[:, :b])
        return graph, out
