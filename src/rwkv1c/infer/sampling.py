"""Sampling settings and the logit transforms, batched, with the `rwkv` package's semantics.

Order of operations for one step of one sequence (what `PIPELINE.generate` + `sample_logits` do):

1. banned tokens get -inf;
2. every token generated so far loses `presence_penalty + frequency_penalty * count`, where `count`
   is a decayed count: after each step all counts are multiplied by `penalty_decay`, then the new
   token's count grows by 1, or by 0 when the token's text is spaces, tabs or digits (those still
   take the presence penalty once seen);
3. softmax of the (untempered) logits; top-p keeps the most likely tokens whose cumulative
   probability first reaches `top_p` (ties with the last one kept), top-k keeps the k most likely;
4. the kept probabilities are raised to `1 / temperature`, renormalised, and one token is drawn.

`temperature == 0` is greedy (argmax). Draws use one uniform number per sequence and step from the
sequence's own `random.Random(seed)`, so a seeded sequence gives the same tokens alone or in any
batch, on any device. Unlike the `rwkv` package, `top_p >= 1` always keeps every token (there, a
float sum that stays just under 1.0 silently turns sampling greedy).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rwkv1c.data.prompts import TURN_SEPARATOR
from rwkv1c.errors import UserError
from rwkv1c.model.tokenizer import END_OF_DOC

if TYPE_CHECKING:
    import torch

BLANK_LINE = TURN_SEPARATOR  # the RWKV chat format ends every turn with a blank line
FREQUENCY_EXEMPT = " \t0123456789"  # a token whose text is a substring of this is not counted


@dataclass(frozen=True)
class SamplingParams:
    """How to continue one prompt. Defaults suit code: nucleus sampling without penalties.

    stop: strings that end the completion (not included in the text).
    stop_at_blank_line: also stop at the first blank line ("\\n\\n"): how RWKV chat models end a turn
        (the chat format collapses blank lines inside turns, see `rwkv1c.prompts`). Turn it off to
        continue raw code, which has blank lines of its own.
    stop_token_ids: tokens that end the completion (never included); token 0 ends a document.
    ban_token_ids: tokens that are never generated.
    seed: None draws a fresh seed; an int makes the sampled tokens reproducible.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 0.3
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_decay: float = 0.996
    stop: tuple[str, ...] = ()
    stop_at_blank_line: bool = True
    stop_token_ids: tuple[int, ...] = (END_OF_DOC,)
    ban_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def problems(self, vocab_size: int | None = None) -> list[str]:
        """Every invalid setting, as messages naming the setting (empty when all are valid)."""
        out = []
        if self.max_tokens < 0:
            out.append(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not self.temperature >= 0:  # also catches NaN
            out.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0 <= self.top_p <= 1:
            out.append(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_k < 0:
            out.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 <= self.penalty_decay <= 1:
            out.append(f"penalty_decay must be in [0, 1], got {self.penalty_decay}")
        if any(not s for s in self.stop):
            out.append("stop strings must not be empty")
        if vocab_size is not None:
            bad = [t for t in (*self.stop_token_ids, *self.ban_token_ids) if not 0 <= t < vocab_size]
            if bad:
                out.append(f"token ids out of range 0..{vocab_size - 1}: {bad[:5]}")
        return out

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_p == 0

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (*self.stop, BLANK_LINE) if self.stop_at_blank_line else self.stop

    def with_seed(self, seed: int | None) -> SamplingParams:
        return dataclasses.replace(self, seed=seed)

    def for_chat(self) -> SamplingParams:
        """These settings, ending a reply at the chat format's turn end (a blank line) whatever they said."""
        return dataclasses.replace(self, stop_at_blank_line=True)

    def checked(self) -> SamplingParams:
        """These settings, or a UserError naming every invalid one as its command-line flag."""
        problems = self.problems()
        if problems:
            flags = "\n".join(f"  - --{p.replace('_', '-', 1)}" for p in problems)
            raise UserError("bad sampling settings:\n" + flags)
        return self


DEFAULTS = SamplingParams()  # the one set of defaults: the commands' flags show and use these values


def from_flags(flags: dict[str, object]) -> SamplingParams:
    """SamplingParams from a command's flags (a mapping of its arguments; those named like a field are
    taken), every invalid one reported at once as its flag."""
    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    return dataclasses.replace(DEFAULTS, **{k: v for k, v in flags.items() if k in fields}).checked()  # type: ignore[arg-type]


def new_rng(seed: int | None) -> random.Random:
    """The per-sequence source of uniform draws."""
    return random.Random(seed if seed is not None else random.SystemRandom().getrandbits(63))


def frequency_weights(token_texts: Sequence[bytes]) -> list[float]:
    """Per-token weight of the frequency count: 0 for spaces, tabs and digits, else 1.

    A token is exempt when its text is a substring of " \\t0123456789" (so "12" or " " count 0).
    """
    weights = []
    for raw in token_texts:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            weights.append(1.0)
            continue
        weights.append(0.0 if text in FREQUENCY_EXEMPT else 1.0)
    return weights


class Penalties:
    """Presence / frequency bookkeeping for up to `capacity` sequences: row i belongs to slot i.

    seen (capacity, V) bool and counts (capacity, V) fp32 live on the weights' device.
    """

    def __init__(self, capacity: int, weights: torch.Tensor) -> None:
        import torch

        V = weights.shape[0]
        self.seen = torch.zeros(capacity, V, dtype=torch.bool, device=weights.device)
        self.counts = torch.zeros(capacity, V, dtype=torch.float32, device=weights.device)
        self.weights = weights.float()  # (V,)

    def apply(self, logits: torch.Tensor, presence: torch.Tensor, frequency: torch.Tensor) -> torch.Tensor:
        """logits (b, V) fp32 of rows 0..b-1, minus presence (b,) where seen, minus frequency (b,) * count."""
        b = logits.shape[0]
        return logits - presence[:, None] * self.seen[:b] - frequency[:, None] * self.counts[:b]

    def update(self, tokens: torch.Tensor, decay: torch.Tensor) -> None:
        """Rows 0..b-1: decay every count by decay (b,), then count the new tokens (b,)."""
        import torch

        b = tokens.shape[0]
        rows = torch.arange(b, device=tokens.device)
        self.counts[:b].mul_(decay[:, None])
        self.counts[rows, tokens] += self.weights[tokens]
        self.seen[rows, tokens] = True

    def clear_row(self, i: int) -> None:
        self.seen[i] = False
        self.counts[i] = 0

    def move_row(self, src: int, dst: int) -> None:
        self.seen[dst] = self.seen[src]
        self.counts[dst] = self.counts[src]


def nucleus_mask(sorted_probs: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Which of the descending-sorted probabilities (B, V) survive top-p (B,) and top-k (B,; 0 = off).

    The cut-off is the probability at the first position where the cumulative sum reaches top_p;
    everything at least that likely stays (ties included), so top_p -> 0 keeps the argmax only.
    """
    import torch

    V = sorted_probs.shape[-1]
    cum = sorted_probs.cumsum(-1)
    first = (cum < top_p[:, None]).sum(-1).clamp(max=V - 1)  # (B,) first index with cum >= top_p
    cutoff = sorted_probs.gather(-1, first[:, None])
    keep = sorted_probs >= cutoff
    keep = keep | (top_p[:, None] >= 1)  # a float sum may never reach 1.0: top_p = 1 keeps all
    ranks = torch.arange(V, device=sorted_probs.device)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, V))
    return keep & (ranks[None, :] < k[:, None])


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    uniform: torch.Tensor,
    *,
    shortlist: int = 1024,
) -> torch.Tensor:
    """One token per row of logits (B, V): rows with temperature 0 take the argmax.

    temperature, top_p, uniform: (B,) float; top_k: (B,) long; uniform in [0, 1).
    The `shortlist` most likely tokens are sorted first; the full vocabulary is sorted only when some
    row's nucleus (or a tie at its edge) reaches beyond them. Either way the result is the same.
    """
    import torch

    logits = logits.float()
    greedy = (temperature == 0) | (top_p == 0)
    out = logits.argmax(-1)
    if bool(greedy.all()):
        return out
    probs = torch.softmax(logits, dim=-1)
    V = probs.shape[-1]
    sorted_probs, order = probs.topk(min(shortlist, V), dim=-1)  # descending
    if sorted_probs.shape[-1] < V:
        K = sorted_probs.shape[-1]
        cum = sorted_probs.cumsum(-1)
        first = (cum < top_p[:, None]).sum(-1).clamp(max=K - 1)
        cutoff = sorted_probs.gather(-1, first[:, None]).squeeze(-1)
        inside = (cum[:, -1] >= top_p) & (top_p < 1) & (sorted_probs[:, -1] < cutoff)
        enough = ((top_k > 0) & (top_k <= K)) | inside | greedy
        if not bool(enough.all()):
            sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep = nucleus_mask(sorted_probs, top_p, top_k)
    inv_t = 1.0 / torch.where(greedy, torch.ones_like(temperature), temperature)
    weights = sorted_probs.pow(inv_t[:, None]) * keep
    cdf = weights.cumsum(-1)
    target = uniform[:, None].to(cdf.dtype) * cdf[:, -1:]
    pos = torch.searchsorted(cdf, target, right=True).clamp(max=sorted_probs.shape[-1] - 1)
    # never land on a removed token (a uniform of exactly 1.0, or rounding at the end of the cdf)
    last_kept = keep.long().cumsum(-1).argmax(-1, keepdim=True)
    pos = torch.minimum(pos, last_kept)
    drawn = order.gather(-1, pos).squeeze(-1)
    return torch.where(greedy, out, drawn)
