"""The training loss: summed cross-entropy of the trained tokens, the head applied a chunk at a time.

The (T, V) fp32 logits of a 4096-token window at vocabulary 65536 take 1 GiB; the loss here never
holds more than one chunk of CE_CHUNK positions of them, and with a frozen head it keeps no logits
for the backward pass at all (`FrozenHeadCE`). The memory model (`rwkv1c.machine.memory`) counts the
same chunk.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rwkv1c.model.rwkv7 import RWKV7

CE_CHUNK = 1024  # positions per cross-entropy chunk: only one chunk's logits are ever alive


def _ce_sum(h: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    logits = F.linear(h, head).float()  # (n, V) fp32
    return (F.cross_entropy(logits, targets, reduction="none") * weight).sum()


@functools.cache
def _frozen_head_ce() -> Any:
    """An autograd function: weighted CE sum through a frozen head, its input gradient made in forward.

    d loss / d logits = (softmax - onehot) * weight is known as soon as the logits are, so the forward
    pass turns it into d loss / d h (n, C) right away and keeps only that: one head matmul fewer than
    recomputing the chunk in the backward pass, and no (n, V) tensor outlives its chunk.
    """
    import torch
    import torch.nn.functional as F

    class FrozenHeadCE(torch.autograd.Function):
        @staticmethod
        def forward(
            ctx: Any, h: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor
        ) -> torch.Tensor:
            logits = F.linear(h, head).float()  # (n, V) fp32
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            loss = ((lse - logits.gather(1, targets[:, None]).squeeze(1)) * weight).sum()
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            probs.scatter_add_(1, targets[:, None], -torch.ones_like(probs[:, :1]))
            probs.mul_(weight[:, None])
            ctx.save_for_backward((probs.to(head.dtype) @ head).to(h.dtype))  # (n, C)
            return loss

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
            (grad_h,) = ctx.saved_tensors
            return grad_h * grad, None, None, None

    return FrozenHeadCE


def build_loss_module(model: RWKV7, grad_ckpt: bool, *, keep_rng: bool = True) -> nn.Module:
    """Wrap the model so that forward(tokens, reset, targets, weight) returns the summed token loss.

    The head and cross-entropy run CE_CHUNK positions at a time, and no chunk's logits are kept for the
    backward pass: the (T, V) fp32 logits are never all alive (1 GiB per 4096-token window at vocabulary
    65536). Every position goes through the head, untrained ones at weight 0: the work never depends on
    the data, so a step has static shapes and no host sync (it can be captured in a CUDA graph).
    `grad_ckpt` recomputes each block in the backward pass; `keep_rng` saves the RNG state for that (only
    LoRA dropout needs it).
    """
    import torch
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    model.gradient_checkpointing = grad_ckpt
    model.checkpoint_rng = keep_rng

    class CausalLMLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, tokens: torch.Tensor, reset: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor
        ) -> torch.Tensor:
            # the final normalised hidden states (B, T, C): the model without its head
            h, _ = self.model(tokens, reset=reset, need_state=False, return_hidden=True)
            head = self.model.head.weight
            h = h.reshape(-1, h.shape[-1])  # (B*T, C)
            tgt, w = targets.reshape(-1), weight.reshape(-1).float()
            total = h.new_zeros((), dtype=torch.float32)
            for lo in range(0, h.shape[0], CE_CHUNK):
                part = (h[lo : lo + CE_CHUNK], head, tgt[lo : lo + CE_CHUNK], w[lo : lo + CE_CHUNK])
                if not torch.is_grad_enabled():
                    total = total + _ce_sum(*part)
                elif not head.requires_grad:
                    total = total + _frozen_head_ce().apply(*part)
                else:  # a trained head (TRAIN_EXTRA=head): recompute the chunk in the backward pass
                    total = total + checkpoint(_ce_sum, *part, use_reentrant=False, preserve_rng_state=False)
            return total

    return CausalLMLoss()
