"""RWKV-7 ("x070", Goose) in one readable file.

Parameter names are the keys of BlinkDL's official `.pth` checkpoints, so a state dict loads with no
renaming; every size (layers, width, heads, vocabulary, FFN, the four low-rank sizes) is read from
tensor shapes (`config.py`). The WKV operator lives in `wkv.py` and is chosen when called
(`model.wkv_impl`); checkpoint files are read and validated by `checkpoint.py`.

Shapes: B batch, T time, C width (n_embd), H heads, N head size (64), V vocabulary.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rwkv1c.model.checkpoint import check_state_dict, load_checkpoint
from rwkv1c.model.config import ATT_LORAS, ATT_VECTORS, ModelConfig
from rwkv1c.model.wkv import WkvImpl, resolve_impl, wkv

LN_X_EPS = 64e-5  # GroupNorm eps of ln_x: 1e-5 * 8**2, not the usual 1e-5


@dataclass
class RWKVState:
    """Recurrent state of the whole model, for a batch.

    att_shift, ffn_shift: (n_layer, B, C) previous token's normalised input (model dtype);
    wkv: (n_layer, B, H, N, N) fp32, official layout (value index, key index).
    """

    att_shift: torch.Tensor
    ffn_shift: torch.Tensor
    wkv: torch.Tensor

    @classmethod
    def zeros(
        cls, config: ModelConfig, batch: int, device: Any = "cpu", dtype: torch.dtype = torch.float32
    ) -> RWKVState:
        L, C, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
        return cls(
            att_shift=torch.zeros(L, batch, C, device=device, dtype=dtype),
            ffn_shift=torch.zeros(L, batch, C, device=device, dtype=dtype),
            wkv=torch.zeros(L, batch, H, N, N, device=device, dtype=torch.float32),
        )

    @property
    def batch_size(self) -> int:
        return self.att_shift.shape[1]

    def clone(self) -> RWKVState:
        return RWKVState(self.att_shift.clone(), self.ffn_shift.clone(), self.wkv.clone())

    def detach(self) -> RWKVState:
        return RWKVState(self.att_shift.detach(), self.ffn_shift.detach(), self.wkv.detach())

    def select(self, index: torch.Tensor | list[int] | slice) -> RWKVState:
        """The states of some batch rows (a copy for tensor/list indices)."""
        return RWKVState(self.att_shift[:, index], self.ffn_shift[:, index], self.wkv[:, index])

    def to(self, device: Any) -> RWKVState:
        return RWKVState(self.att_shift.to(device), self.ffn_shift.to(device), self.wkv.to(device))

    @staticmethod
    def cat(states: list[RWKVState]) -> RWKVState:
        """Stack states of several batches into one batch."""
        return RWKVState(
            torch.cat([s.att_shift for s in states], dim=1),
            torch.cat([s.ffn_shift for s in states], dim=1),
            torch.cat([s.wkv for s in states], dim=1),
        )


def token_shift(x: torch.Tensor, prev: torch.Tensor | None, reset: torch.Tensor | None) -> torch.Tensor:
    """The previous token's x for every position: (B, T, C). Zero at a document start."""
    if prev is None:
        shifted = F.pad(x, (0, 0, 1, -1))  # one step later along T, zero in front
    else:
        shifted = torch.cat([prev.unsqueeze(1).to(x.dtype), x[:, :-1]], dim=1)
    if reset is not None:
        shifted = shifted.masked_fill(reset.unsqueeze(-1), 0.0)
    return shifted


def _autocast_off(x: torch.Tensor) -> torch.autocast:
    """A region where autocast does not promote to fp32 (norms, sums): activations keep x's dtype."""
    return torch.autocast(x.device.type, enabled=False)


def _norm(norm: nn.LayerNorm | nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm / GroupNorm in x's dtype (the kernels keep their statistics in fp32).

    Under autocast torch would run norms in fp32 and hand fp32 to every op after them; the model keeps
    its activations in one dtype instead, and parameters trained in fp32 are cast where they are used.
    """
    dt = x.dtype
    assert norm.weight is not None and norm.bias is not None
    with _autocast_off(x):
        if isinstance(norm, nn.GroupNorm):
            return F.group_norm(x, norm.num_groups, norm.weight.to(dt), norm.bias.to(dt), norm.eps)
        return F.layer_norm(x, norm.normalized_shape, norm.weight.to(dt), norm.bias.to(dt), norm.eps)


@functools.cache
def _compiled(fn: Any) -> Any:
    """`fn` through torch.compile, built on first use; one compiled graph serves every layer."""
    return torch.compile(fn)


class TimeMix(nn.Module):
    """`blocks.N.att`: the RWKV-7 time mixing (attention replacement)."""

    # set by name in __init__ (ATT_VECTORS, ATT_LORAS); v0/v1/v2 only after layer 0
    x_r: nn.Parameter
    x_w: nn.Parameter
    x_k: nn.Parameter
    x_v: nn.Parameter
    x_a: nn.Parameter
    x_g: nn.Parameter
    w0: nn.Parameter
    a0: nn.Parameter
    v0: nn.Parameter
    k_k: nn.Parameter
    k_a: nn.Parameter
    w1: nn.Parameter
    w2: nn.Parameter
    a1: nn.Parameter
    a2: nn.Parameter
    v1: nn.Parameter
    v2: nn.Parameter
    g1: nn.Parameter
    g2: nn.Parameter

    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.n_head, self.head_size = H, N
        for name in ATT_VECTORS:
            if name == "v0" and layer_id == 0:
                continue  # layer 0 makes v_first; it has no value residual
            setattr(self, name, nn.Parameter(torch.empty(1, 1, C)))
        for p, size_name in ATT_LORAS.items():
            if p == "v" and layer_id == 0:
                continue
            d = getattr(cfg, size_name)
            setattr(self, f"{p}1", nn.Parameter(torch.empty(C, d)))
            setattr(self, f"{p}2", nn.Parameter(torch.empty(d, C)))
        self.r_k = nn.Parameter(torch.empty(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=LN_X_EPS)

    def mix(
        self,
        x: torch.Tensor,  # (B, T, C), already ln1-normalised
        v_first: torch.Tensor | None,  # None in layer 0, which makes it
        shift: torch.Tensor | None,  # (B, C) previous token, or None
        reset: torch.Tensor | None,  # (B, T) bool
    ) -> tuple[torch.Tensor, ...]:
        """Everything before the WKV operator: r, log_w, k, v, a, b per head (B, T, H, N), g, v_first."""
        B, T, _ = x.shape
        H, N = self.n_head, self.head_size
        dt = x.dtype
        xx = token_shift(x, shift, reset) - x
        mixes = (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g)
        xr, xw, xk, xv, xa, xg = (torch.addcmul(x, xx, m.to(dt)) for m in mixes)

        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        # decay w = exp(-e^-0.5 * sigmoid(.)) in (0.545, 1); kept as its log, in fp32
        log_w = -math.exp(-0.5) * torch.sigmoid((self.w0.to(dt) + torch.tanh(xw @ self.w1) @ self.w2).float())
        a = torch.sigmoid(self.a0.to(dt) + (xa @ self.a1) @ self.a2)  # in-context learning rate
        g = torch.sigmoid(xg @ self.g1) @ self.g2  # output gate
        if v_first is None:  # layer 0: its value is the residual every later layer mixes in
            v_first = v
        else:
            gate = torch.sigmoid(self.v0.to(dt) + (xv @ self.v1) @ self.v2)
            v = torch.lerp(v, v_first.to(v.dtype), gate.to(v.dtype))  # lerp needs one dtype
        with _autocast_off(x):  # removal key, unit length per head
            kk = F.normalize((k * self.k_k.to(dt)).view(B, T, H, N), dim=-1, p=2.0, eps=1e-12)
        k_a = self.k_a.to(dt)
        k = k * torch.addcmul(1 - k_a, a, k_a)  # k * (1 + (a - 1) * k_a)
        heads = [t.view(B, T, H, N) for t in (r, log_w, k, v)]
        return (*heads, -kk, kk * a.view(B, T, H, N), g, v_first)

    def finish(
        self, y: torch.Tensor, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        """After the WKV operator: ln_x, the per-head bonus r·(k⊙r_k)·v, the gate and the output."""
        B, T, H, N = r.shape
        dt = r.dtype
        y = _norm(self.ln_x, y.to(dt).reshape(B * T, H * N)).view(B, T, H, N)
        with _autocast_off(r):  # the per-head sum stays in r's dtype
            y = torch.addcmul(y, (r * k * self.r_k.to(dt)).sum(-1, keepdim=True), v)
        return self.output(y.view(B, T, H * N) * g)  # type: ignore[no-any-return]


class ChannelMix(nn.Module):
    """`blocks.N.ffn`: squared-ReLU feed-forward with token shift."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.x_k = nn.Parameter(torch.empty(1, 1, cfg.n_embd))
        self.key = nn.Linear(cfg.n_embd, cfg.dim_ffn, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None, reset: torch.Tensor | None) -> torch.Tensor:
        xx = token_shift(x, shift, reset) - x
        k = torch.relu(self.key(torch.addcmul(x, xx, self.x_k.to(x.dtype))))
        return self.value(k * k)  # type: ignore[no-any-return]  # (not k ** 2: autocast runs pow in fp32)


class Block(nn.Module):
    """`blocks.N`: pre-norm residual block; `ln0` (on the embeddings, applied by RWKV7) only in block 0."""

    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(cfg.n_embd)
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg)

    def forward(
        self,
        x: torch.Tensor,
        v_first: torch.Tensor | None,
        state: RWKVState | None,
        reset: torch.Tensor | None,
        impl: WkvImpl,
        compiled: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One block. `compiled` runs the parts around the WKV operator through torch.compile: they are
        dozens of small elementwise ops per layer, which the compiler fuses into a few kernels."""
        i = self.layer_id
        att_shift = ffn_shift = wkv_state = None
        if state is not None:
            att_shift, ffn_shift, wkv_state = state.att_shift[i], state.ffn_shift[i], state.wkv[i]
        pre, post = (
            (_compiled(Block.pre_wkv), _compiled(Block.post_wkv)) if compiled else (Block.pre_wkv, Block.post_wkv)
        )
        xa_last, r, log_w, k, v, a, b, g, v_first = pre(self, x, v_first, att_shift, reset)
        y, wkv_state = wkv(r, log_w, k, v, a, b, state=wkv_state, reset=reset, impl=impl)
        x, xf_last = post(self, x, y, r, k, v, g, ffn_shift, reset)
        return x, v_first, (xa_last, xf_last, wkv_state)  # type: ignore[return-value]

    def pre_wkv(
        self, x: torch.Tensor, v_first: torch.Tensor | None, shift: torch.Tensor | None, reset: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        xa = _norm(self.ln1, x)
        return (xa[:, -1], *self.att.mix(xa, v_first, shift, reset))

    def post_wkv(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        r: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        g: torch.Tensor,
        shift: torch.Tensor | None,
        reset: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.att.finish(y, r, k, v, g)
        xf = _norm(self.ln2, x)
        return x + self.ffn(xf, shift, reset), xf[:, -1]


class RWKV7(nn.Module):
    """The whole RWKV-7 language model.

    `logits, state = model(tokens)` with tokens (B, T) -> logits (B, T, V); pass `state` to continue.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_out = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wkv_impl: WkvImpl = "auto"
        self.gradient_checkpointing = False
        self.checkpoint_rng = True  # keep the RNG state for recomputed blocks (needed with dropout only)
        self.compile_blocks = False  # torch.compile the elementwise parts of every block (GPU training)

    def forward(
        self,
        tokens: torch.Tensor,
        state: RWKVState | None = None,
        *,
        reset: torch.Tensor | None = None,
        last_only: bool = False,
        need_state: bool = True,
        return_hidden: bool = False,
    ) -> tuple[torch.Tensor, RWKVState | None]:
        """Run tokens (B, T) from `state` (zeros when None).

        reset: (B, T) bool, True where a new document starts (state zeroed before that token).
        last_only: return logits for the last position only, (B, 1, V).
        need_state: False skips building the returned state (training).
        return_hidden: return the final normalised hidden states (B, T, C) instead of logits, for a
            loss that applies the head itself (chunked cross-entropy).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, T), got shape {tuple(tokens.shape)}")
        x = _norm(self.blocks[0].ln0, self.emb(tokens))  # type: ignore[arg-type]
        v_first: torch.Tensor | None = None
        impl = resolve_impl(self.wkv_impl, tokens.is_cuda, tokens.shape[1])  # once for every layer
        shifts_att, shifts_ffn, wkv_states = [], [], []
        for block in self.blocks:
            args = (x, v_first, state, reset, impl, self.compile_blocks)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # no randomness inside a block (LoRA dropout aside, which asks for the RNG to be kept): not
                # saving the RNG state keeps the recomputation free of host syncs (CUDA graphs)
                x, v_first, (sa, sf, sw) = torch.utils.checkpoint.checkpoint(
                    block, *args, use_reentrant=False, preserve_rng_state=self.checkpoint_rng
                )
            else:
                x, v_first, (sa, sf, sw) = block(*args)
            if need_state:
                shifts_att.append(sa)
                shifts_ffn.append(sf)
                wkv_states.append(sw)
        if last_only:
            x = x[:, -1:]
        out = _norm(self.ln_out, x)
        if not return_hidden:
            out = self.head(out)
        new_state = None
        if need_state:
            new_state = RWKVState(torch.stack(shifts_att), torch.stack(shifts_ffn), torch.stack(wkv_states))
        return out, new_state

    def zero_state(self, batch: int) -> RWKVState:
        p = self.emb.weight
        return RWKVState.zeros(self.config, batch, device=p.device, dtype=p.dtype)

    @classmethod
    def from_state_dict(
        cls, sd: dict[str, torch.Tensor], *, device: Any = "cpu", dtype: torch.dtype | None = None
    ) -> RWKV7:
        """Build a model from an official state dict (validated; block-0 v0/v1/v2 ignored if present)."""
        check_state_dict(sd)
        config = ModelConfig.from_state_dict(sd)
        with torch.device("meta"):
            model = cls(config)
        wanted = model.state_dict().keys()
        tensors = {k: sd[k] for k in wanted}
        model.load_state_dict(tensors, assign=True, strict=True)
        target = dtype or sd["emb.weight"].dtype
        model.to(device=device, dtype=target)
        return model.eval()

    @classmethod
    def from_pth(cls, path: str | Path, *, device: Any = "cpu", dtype: torch.dtype | None = None) -> RWKV7:
        """Load an official RWKV-7 `.pth` checkpoint (memory-mapped, weights only)."""
        sd = load_checkpoint(path)
        return cls.from_state_dict(sd, device=device, dtype=dtype)
