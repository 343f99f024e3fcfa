"""Documents packed into training windows, and which windows every process trains on at every step.

Every epoch visits every training document once, in an order shuffled with (seed, epoch). The shuffled
documents are laid end to end as one token stream and cut into windows of ctx_len + 1 tokens that
overlap by one token (inputs = window[:-1], targets = window[1:]), so no position is padded except at
the very end of the epoch. Each document ends with the end-of-document token 0, which is part of it:
its last real token learns to predict 0.

The model never sees across a document boundary: `reset` is True at the first token of every document
(the recurrent state is zeroed there) and a target that starts a new document is not trained on (it
would be predicted from the previous document).

Arrays: T = ctx_len; a batch holds tokens (B, T) int64, reset (B, T) bool, targets (B, T) int64 and
weight (B, T) float32 (1 where the target is trained on, else 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rwkv1c.data.documents import Documents


@dataclass
class Batch:
    """Model inputs and loss targets for B windows: every array (B, T)."""

    tokens: np.ndarray
    reset: np.ndarray
    targets: np.ndarray
    weight: np.ndarray

    @property
    def n_trained(self) -> int:
        return int(self.weight.sum())

    @staticmethod
    def stack(windows: Sequence[Batch]) -> Batch:
        return Batch(
            *(np.concatenate([getattr(w, f) for w in windows]) for f in ("tokens", "reset", "targets", "weight"))
        )


class PackedStream:
    """Documents laid end to end in a given order and cut into windows of ctx_len + 1 tokens."""

    def __init__(self, docs: Documents, order: np.ndarray, ctx_len: int) -> None:
        self.docs, self.order, self.ctx_len = docs, np.asarray(order, dtype=np.int64), ctx_len
        self.starts = np.concatenate([[0], np.cumsum(docs.lengths()[self.order])])  # stream offset of every document
        self.total = int(self.starts[-1])

    def __len__(self) -> int:
        return max(1, math.ceil((self.total - 1) / self.ctx_len)) if self.total else 0

    def window(self, w: int) -> Batch:
        """Window w (0-based) as a batch of one; beyond the end: an empty window (nothing trains)."""
        T = self.ctx_len
        lo, hi = w * T, w * T + T + 1  # stream positions [lo, hi): one token of overlap with the next window
        tokens = np.zeros(T + 1, dtype=np.int64)
        first = np.ones(T + 1, dtype=bool)  # position starts a document (padding counts as one: no leakage)
        trains = np.zeros(T + 1, dtype=bool)
        d = int(np.searchsorted(self.starts, lo, side="right")) - 1
        while 0 <= d < len(self.order) and self.starts[d] < hi:
            s = int(self.starts[d])
            a, b = max(lo, s), min(hi, int(self.starts[d + 1]))
            doc = self.order[d]
            toks = self.docs.tokens(int(doc))
            mask = self.docs.mask(int(doc))
            tokens[a - lo : b - lo] = toks[a - s : b - s]
            first[a - lo : b - lo] = False
            if a == s:
                first[a - lo] = True
            trains[a - lo : b - lo] = True if mask is None else mask[a - s : b - s]
            d += 1
        reset = first[:-1].copy()
        reset[0] = True  # every window starts from a zero state
        weight = (trains[1:] & ~first[1:]).astype(np.float32)  # a document's first token is never a target
        return Batch(tokens[None, :-1], reset[None], tokens[None, 1:], weight[None])


class StepPlan:
    """Which windows every rank trains on at every optimizer step; a pure function of (seed, step).

    One optimizer step takes grad_accum x world x micro_bsz consecutive windows of the epoch's stream:
    micro-step m, rank r, row b gets window m*world*micro_bsz + r*micro_bsz + b. With one GPU and
    micro_bsz 2 a step sees the same windows as two GPUs with micro_bsz 1. Windows past the end of an
    epoch are empty, so every document is seen exactly once per epoch and all ranks take the same
    number of steps.
    """

    def __init__(
        self, docs: Documents, ctx_len: int, micro_bsz: int, grad_accum: int, seed: int, world: int = 1
    ) -> None:
        self.docs, self.ctx_len, self.micro_bsz, self.grad_accum = docs, ctx_len, micro_bsz, grad_accum
        self.seed, self.world = seed, world
        self._epoch: int | None = None
        self._stream: PackedStream | None = None
        self.windows_per_epoch = len(self.stream(0))
        self.windows_per_step = micro_bsz * grad_accum * world
        self.steps_per_epoch = math.ceil(self.windows_per_epoch / self.windows_per_step)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.docs))

    def stream(self, epoch: int) -> PackedStream:
        if self._epoch != epoch or self._stream is None:
            self._stream = PackedStream(self.docs, self.order(epoch), self.ctx_len)
            self._epoch = epoch
        return self._stream

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, first window) of optimizer step `step` (0-based)."""
        return step // self.steps_per_epoch, (step % self.steps_per_epoch) * self.windows_per_step

    def step(self, step: int, rank: int = 0) -> tuple[list[Batch], int]:
        """This rank's micro-batches for optimizer step `step`, and the trained tokens of the whole step."""
        epoch, first = self.position(step)
        stream = self.stream(epoch)
        windows = [stream.window(first + j) for j in range(self.windows_per_step)]
        total = sum(w.n_trained for w in windows)
        group = self.world * self.micro_bsz
        micro = []
        for m in range(self.grad_accum):
            lo = m * group + rank * self.micro_bsz
            micro.append(Batch.stack(windows[lo : lo + self.micro_bsz]))
        return micro, total


def validation_windows(docs: Documents, ctx_len: int, max_windows: int = 0) -> list[Batch]:
    """Validation documents in their stored order, packed the same way; at most `max_windows` (0: all)."""
    stream = PackedStream(docs, np.arange(len(docs)), ctx_len)
    n = len(stream) if max_windows <= 0 else min(len(stream), max_windows)
    return [stream.window(i) for i in range(n)]
