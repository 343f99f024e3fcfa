"""The inference engine: continuous batching of recurrent decoding, with a prompt-prefix state cache.

An RWKV sequence's whole context is a fixed-size state, so batching is bookkeeping: the engine keeps a
slot state of `max_batch` rows (fp32 WKV state, token shifts in the model dtype); active sequences
hold rows 0..n-1. A step

1. admits waiting sequences into free rows: their prompts are prefilled through `model.forward` (with
   the WKV kernel the model picks when called: fla's on CUDA, the exact chunked form on the CPU;
   several prompts at once, left-padded, with a document reset at each prompt's first token so the
   padding never reaches the state), starting from the longest prefix whose state is cached, or from
   a given state;
2. samples one token for every active row (`sampling.py`), turns it into text without ever splitting
   a UTF-8 character, and checks the stops (token 0, stop strings, "\\n\\n", max tokens);
3. drops finished rows (the last row moves into the hole), and runs one decode step for the rest
   (`fast_decode.py`: fused kernels and CUDA graphs on GPU).

`Engine.generate` runs prompts to completion; `Engine.submit` + `Engine.step` let a server add
requests while others decode. Those are not thread-safe: one thread drives an engine. `encode` only
tokenises (the Rust tokenizer is thread-safe) and may be called from any thread.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rwkv1c.config import Quant
from rwkv1c.errors import UserError
from rwkv1c.infer.sampling import Penalties, SamplingParams, frequency_weights, new_rng, sample
from rwkv1c.model.loader import Device, DType

if TYPE_CHECKING:
    import random

    import torch

    from rwkv1c.infer.multi_lora import AdapterRows
    from rwkv1c.model.rwkv7 import RWKV7, RWKVState

FinishReason = Literal["stop", "length", "cancelled"]
MIN_SHARED_PREFIX = 32  # tokens: a common preamble at least this long is prefilled once for all prompts
PREFILL_ELEMENTS = 2**23  # tokens x width of one prefill call on a GPU: its activations stay near 1 GiB


def prefill_budget(n_embd: int, device_type: str) -> int:
    """The most tokens (rows x length) one prefill call reads: 4096 at width 2048 (1.5B), 2048 at 4096
    (7.2B) on a GPU, so a long prompt costs the same activation memory at any size; 2048 on the CPU."""
    if device_type != "cuda":
        return 2048
    return max(1024, PREFILL_ELEMENTS // n_embd)


@dataclass
class Completion:
    """One finished sequence. `text` excludes the stop string; `token_ids` exclude a stop token."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    state: RWKVState | None = None  # when asked for: the state after the prompt and token_ids[:state_tokens]
    state_tokens: int = 0


class TextTracker:
    """Turns tokens into text for one sequence: whole UTF-8 characters only, stop strings cut out.

    Text that could be the start of a stop string is held back until it is known not to be one, so a
    stream never shows a stop string (or part of one).
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        from rwkv1c.model.tokenizer import StreamDecoder

        self.decoder = StreamDecoder(tokenizer)
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def _take(self, piece: str) -> str:
        start = max(0, len(self.text) - self.longest + 1)
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            safe = len(self.text)
        else:
            hold = 0
            for s in self.stops:
                for n in range(min(len(s) - 1, len(self.text)), hold, -1):
                    if self.text.endswith(s[:n]):
                        hold = n
                        break
            safe = len(self.text) - hold
        out = self.text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out

    def push(self, token: int) -> str:
        """New text that is safe to show (may be empty); sets `stopped` when a stop string appeared."""
        piece = self.decoder.push(token)
        return self._take(piece) if piece else ""

    def finish(self) -> str:
        """The rest of the text at the end of the sequence."""
        if not self.stopped:
            tail = self.decoder.flush()
            if tail:
                self._take(tail)
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out


@dataclass(eq=False)
class Request:
    """A sequence to generate. `on_text(delta)` streams text; `on_finish(completion)` ends it (once, also when
    it was cancelled: reason "cancelled"); a host that drives the engine calls `on_error(message)` when a
    failure aborts it (the engine itself never does). Setting `cancelled` from any thread drops the request
    at the engine's next step. `adapter` picks one of the engine's adapters (0: the base; see
    `Engine.adapter_names`)."""

    prompt_ids: list[int]
    params: SamplingParams
    start_state: RWKVState | None = None  # continue from this (1-row) state instead of the prompt cache
    start_logits: torch.Tensor | None = None  # (V,) with start_state and no prompt: sample from these at once
    want_state: bool = False
    cache_at: tuple[int, ...] = ()  # prompt positions whose states are worth caching (e.g. after a system prompt)
    adapter: int = 0
    on_text: Callable[[str], None] | None = None
    on_finish: Callable[[Completion], None] | None = None
    on_error: Callable[[str], None] | None = None
    cancelled: bool = False
    # filled in by the engine
    rng: random.Random | None = None
    tracker: TextTracker | None = None
    generated: list[int] = field(default_factory=list)
    sampled_kept: bool = False  # the last sampled token was appended (and not yet fed to the model)
    completion: Completion | None = None


class PrefixCache:
    """LRU map from (adapter, prompt-token prefix) to (1-row state, logits of the last position), within a
    byte budget. A state depends on the adapter that read the prompt, so each adapter has its own prefixes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: collections.OrderedDict[tuple[int, tuple[int, ...]], tuple[RWKVState, torch.Tensor]] = (
            collections.OrderedDict()
        )
        self.bytes = 0

    @staticmethod
    def _size(state: RWKVState, logits: torch.Tensor) -> int:
        return sum(t.numel() * t.element_size() for t in (state.att_shift, state.ffn_shift, state.wkv, logits))

    def lookup(self, ids: Sequence[int], adapter: int = 0) -> tuple[int, RWKVState | None, torch.Tensor | None]:
        """The longest cached prefix of `ids`: (its length, state, logits), or (0, None, None)."""
        best: tuple[int, tuple[int, ...]] | None = None
        for key in self.entries:
            a, prefix = key
            if (
                a == adapter
                and len(prefix) <= len(ids)
                and (best is None or len(prefix) > len(best[1]))
                and tuple(ids[: len(prefix)]) == prefix
            ):
                best = key
        if best is None:
            return 0, None, None
        self.entries.move_to_end(best)
        state, logits = self.entries[best]
        return len(best[1]), state, logits

    def put(self, ids: Sequence[int], state: RWKVState, logits: torch.Tensor, adapter: int = 0) -> None:
        key = (adapter, tuple(ids))
        if not key[1] or key in self.entries:
            return
        size = self._size(state, logits)
        if size > self.max_bytes:
            return
        while self.entries and self.bytes + size > self.max_bytes:
            _, (old_state, old_logits) = self.entries.popitem(last=False)
            self.bytes -= self._size(old_state, old_logits)
        self.entries[key] = (state.clone(), logits.clone())
        self.bytes += size


class Engine:
    """Batched RWKV-7 generation over one model and tokenizer.

    max_batch: rows decoded together (the slot state holds this many sequences).
    prefix_cache_mb: memory for cached prompt-prefix states (0 = off).
    prefill_tokens: the most tokens (rows x length) one prefill call processes.
    kernels / cuda_graphs: see `fast_decode.FastDecoder`.
    adapters: the `multi_lora.AdapterRows` of several adapters attached to `model` (`attach_adapters`),
        so that each request's `adapter` picks one; None: the model as it is.
    """

    def __init__(
        self,
        model: RWKV7,
        tokenizer: Any,
        *,
        max_batch: int = 32,
        prefix_cache_mb: float = 256,
        prefill_tokens: int | None = None,
        kernels: Literal["auto", "torch", "triton"] = "auto",
        cuda_graphs: bool | None = None,
        adapters: AdapterRows | None = None,
    ) -> None:
        import torch

        from rwkv1c.infer.fast_decode import FastDecoder
        from rwkv1c.model.rwkv7 import RWKVState

        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = model.emb.weight.device
        self.dtype = model.emb.weight.dtype
        self.vocab_size = model.config.vocab_size
        self.capacity = max_batch
        self.prefill_tokens = prefill_tokens or prefill_budget(model.config.n_embd, self.device.type)
        self.adapters = adapters
        if adapters is not None:
            adapters.bind(max_batch)  # before the decoder captures graphs over its buffer
        self.decoder = FastDecoder(model, kernels=kernels, cuda_graphs=cuda_graphs)
        self.slots = RWKVState.zeros(model.config, max_batch, self.device, self.dtype)
        self.logits = torch.zeros(max_batch, self.vocab_size, device=self.device)
        self.rows: list[Request] = []
        self.waiting: collections.deque[Request] = collections.deque()
        self.cache = PrefixCache(int(prefix_cache_mb * 2**20))
        self._penalties: Any = None
        self._row_params: tuple[torch.Tensor, ...] | None = None
        self._row_adapters: torch.Tensor | None = None
        self._next: torch.Tensor | None = None  # tokens to feed rows 0..n-1 (None: rows were just admitted)

    # ------------------------------------------------------------------ public API

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    @property
    def adapter_names(self) -> list[str]:
        """Names of the attached adapters: `Request.adapter` i > 0 is adapter_names[i - 1]."""
        return [] if self.adapters is None else list(self.adapters.names)

    def submit(self, request: Request) -> Request:
        """Queue a request; it joins the batch at the next step."""
        problems = request.params.problems(self.vocab_size)
        if any(not 0 <= t < self.vocab_size for t in request.prompt_ids):
            problems.append(f"prompt token ids must be in 0..{self.vocab_size - 1}")
        if not request.prompt_ids and (request.start_state is None or request.start_logits is None):
            problems.append("the prompt is empty")
        if not 0 <= request.adapter <= len(self.adapter_names):
            problems.append(f"adapter must be in 0..{len(self.adapter_names)}, got {request.adapter}")
        if problems:
            raise UserError("bad generation request: " + "; ".join(problems))
        request.rng = new_rng(request.params.seed)
        request.tracker = TextTracker(self.tokenizer, request.params.stop_strings)
        self.waiting.append(request)
        return request

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        on_text: Callable[[int, str], None] | None = None,
    ) -> list[Completion]:
        """Generate a completion for every prompt (text or token ids), batched; results in prompt order.

        A preamble shared by all prompts (at least MIN_SHARED_PREFIX tokens) is prefilled once.
        on_text(index, delta) streams each prompt's text as it appears.
        """
        ids = [self.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        params = SamplingParams() if params is None else params
        plist = [params] * len(ids) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(ids):
            raise ValueError("one SamplingParams per prompt, or one for all")
        self.share_prefix(ids)
        requests = []
        for i, (p_ids, p) in enumerate(zip(ids, plist)):
            cb = (lambda d, i=i: on_text(i, d)) if on_text else None
            requests.append(self.submit(Request(p_ids, p, on_text=cb)))
        self.run_until_done()
        return [r.completion for r in requests]  # type: ignore[misc]

    def generate_from(
        self, state: RWKVState | None, prompt_ids: Sequence[int], params: SamplingParams, *,
        logits: torch.Tensor | None = None, on_text: Callable[[str], None] | None = None,
    ) -> Completion:  # fmt: skip
        """One completion continuing `state` (None: from the prompt cache), returning its final state.

        With no prompt ids, `logits` (V,) are the model's output after `state`: sampling starts there.
        """
        request = Request(list(prompt_ids), params, start_state=state, start_logits=logits, want_state=True)
        request.on_text = on_text
        self.submit(request)
        self.run_until_done()
        assert request.completion is not None
        return request.completion

    def abort_all(self) -> list[Request]:
        """Drop every active and waiting request (after an error); returns them."""
        dropped = [*self.rows, *self.waiting]
        self.rows, self.waiting = [], collections.deque()
        self._next = None
        self._row_params = None
        self._row_adapters = None
        return dropped

    def run_until_done(self) -> None:
        while self.busy:
            self.step()

    def prefill(
        self, ids: Sequence[int], state: RWKVState | None = None, *, adapter: int = 0
    ) -> tuple[RWKVState, torch.Tensor]:
        """The (1-row) state after `ids` from `state` (zeros when None), and the last position's logits (V,)."""
        import torch

        ids = list(ids)
        if state is None:
            hit, cached, logits = self.cache.lookup(ids, adapter)
            if hit == len(ids) and cached is not None and logits is not None:
                return cached.clone(), logits.clone()
            if hit:
                state, ids = cached, ids[hit:]
        assert ids, "nothing to prefill"
        with torch.inference_mode():  # the model never writes into `state` (a cached one stays intact)
            st, logits = self._run(torch.tensor([ids], device=self.device), state, adapters=[adapter])
        return st, logits[0]

    def share_prefix(self, prompts: Sequence[Sequence[int]]) -> int:
        """Prefill and cache the longest common prefix of the prompts (if long enough); its length."""
        if len(prompts) < 2:
            return 0
        n = min(len(p) for p in prompts)
        first = prompts[0]
        for p in prompts[1:]:
            n = next((i for i in range(n) if p[i] != first[i]), n)
        if n < MIN_SHARED_PREFIX or any(len(p) == n for p in prompts):
            return 0  # too short, or a whole prompt: identical prompts are prefilled once anyway
        if self.cache.lookup(first[:n])[0] == n:
            return n
        state, logits = self.prefill(first[:n])
        self.cache.put(first[:n], state, logits)
        return n

    # ------------------------------------------------------------------ one step

    def step(self) -> None:
        """Decode the tokens sampled last step, admit waiting requests, sample one token for every row."""
        import torch

        with torch.inference_mode():
            self._drop_cancelled()
            if self._next is not None:  # run last step's tokens through the model (rows 0..n-1)
                n = len(self.rows)
                if self.adapters is not None:
                    self.adapters.for_decode(self._adapter_ids())
                self.logits[:n].copy_(self.decoder(self._next, self.slots, n))
                self._next = None
            self._admit()
            if not self.rows:
                return
            tokens = self._sample()
            self._advance(tokens)

    def _drop_cancelled(self) -> None:
        if any(r.cancelled for r in self.waiting):
            for r in self.waiting:
                if r.cancelled:
                    self._finish(r, "cancelled", None)
            self.waiting = collections.deque(r for r in self.waiting if not r.cancelled)
        gone = [i for i, r in enumerate(self.rows) if r.cancelled]
        if gone:
            for i in gone:
                self._finish(self.rows[i], "cancelled", i)
            self._compact(gone, self._next)

    def _sample(self) -> list[int]:
        import torch

        n = len(self.rows)
        logits = self.logits[:n]
        temp, top_p, top_k, presence, frequency, decay = self._params_tensors()
        use_pen = any(r.params.presence_penalty or r.params.frequency_penalty for r in self.rows)
        if use_pen:
            logits = self._penalty_book().apply(logits, presence, frequency)
        bans = [(i, list(r.params.ban_token_ids)) for i, r in enumerate(self.rows) if r.params.ban_token_ids]
        if bans:
            logits = logits.clone() if not use_pen else logits
            for i, ids in bans:
                logits[i, ids] = -float("inf")
        if all(r.params.greedy for r in self.rows):
            out = logits.argmax(-1)
        else:
            u = torch.tensor([r.rng.random() for r in self.rows], device=self.device)  # type: ignore[union-attr]
            out = sample(logits, temp, top_p, top_k, u)
        if use_pen:  # a row admitted later starts with cleared counts
            self._penalty_book().update(out, decay)
        self._next = out
        return out.tolist()  # type: ignore[no-any-return]

    def _advance(self, tokens: list[int]) -> None:
        finished: list[tuple[int, FinishReason]] = []
        for i, (r, tok) in enumerate(zip(self.rows, tokens)):
            assert r.tracker is not None
            r.sampled_kept = tok not in r.params.stop_token_ids
            if not r.sampled_kept:
                finished.append((i, "stop"))
                continue
            r.generated.append(tok)
            delta = r.tracker.push(tok)
            if delta and r.on_text:
                r.on_text(delta)
            if r.tracker.stopped:
                finished.append((i, "stop"))
            elif len(r.generated) >= r.params.max_tokens:
                finished.append((i, "length"))
        for i, reason in finished:
            self._finish(self.rows[i], reason, i)
        if finished:
            self._compact([i for i, _ in finished], self._next)

    def _finish(self, r: Request, reason: FinishReason, row: int | None) -> None:
        assert r.tracker is not None
        tail = r.tracker.finish()
        if tail and r.on_text and reason != "cancelled":
            r.on_text(tail)
        state = self.slots.select(slice(row, row + 1)).clone() if (r.want_state and row is not None) else None
        # the row has consumed every generated token but the one sampled this step (when that one was kept)
        fed = len(r.generated) - (1 if r.sampled_kept else 0)
        r.completion = Completion(r.tracker.text, list(r.generated), reason, len(r.prompt_ids), state, fed)
        if r.on_finish:
            r.on_finish(r.completion)

    def _compact(self, gone: list[int], next_tokens: torch.Tensor | None) -> None:
        """Remove rows `gone`: the last live row moves into each hole (state, penalties, pending token)."""
        import torch

        order = list(range(len(self.rows)))
        for i in sorted(gone, reverse=True):
            last = len(order) - 1
            if i != last:
                src = order[last]
                for t in (self.slots.att_shift, self.slots.ffn_shift, self.slots.wkv):
                    t[:, i].copy_(t[:, last])
                self.logits[i].copy_(self.logits[last])
                if self._penalties is not None:
                    self._penalties.move_row(last, i)
                self.rows[i] = self.rows[last]
                order[i] = src
            order.pop()
            self.rows.pop()
        if next_tokens is not None:
            keep = torch.tensor(order, dtype=torch.long, device=next_tokens.device)
            self._next = next_tokens[keep] if order else None  # no rows left: no decode step pending
        self._row_params = None
        self._row_adapters = None

    # ------------------------------------------------------------------ admission and prefill

    def _admit(self) -> None:
        """Prefill waiting requests into the free rows (called when no decode step is pending)."""
        assert self._next is None
        free = self.capacity - len(self.rows)
        if not self.waiting or free <= 0:
            return
        new = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        for r in new:
            if r.params.max_tokens == 0:
                self._finish(r, "length", None)
        new = [r for r in new if r.params.max_tokens > 0]
        if not new:
            return
        states, logits = self._prefill_requests(new)
        n0, k = len(self.rows), len(new)
        self.slots.att_shift[:, n0 : n0 + k].copy_(states.att_shift)
        self.slots.ffn_shift[:, n0 : n0 + k].copy_(states.ffn_shift)
        self.slots.wkv[:, n0 : n0 + k].copy_(states.wkv)
        self.logits[n0 : n0 + k].copy_(logits)
        self.rows.extend(new)
        self._row_params = None
        self._row_adapters = None
        if self._penalties is not None:
            for i in range(n0, n0 + k):
                self._penalties.clear_row(i)

    def _prefill_requests(self, new: list[Request]) -> tuple[RWKVState, torch.Tensor]:
        """States and last logits (k, V) for the new requests, in order."""
        import torch

        from rwkv1c.model.rwkv7 import RWKVState

        results: list[tuple[RWKVState, torch.Tensor] | None] = [None] * len(new)
        # zero-start prompts (deduplicated per adapter) -> request indices
        fresh: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        continued: list[tuple[int, RWKVState, list[int]]] = []  # (index, start state, remaining ids)
        for i, r in enumerate(new):
            if r.start_state is not None:
                if r.prompt_ids:
                    continued.append((i, r.start_state, list(r.prompt_ids)))
                else:
                    assert r.start_logits is not None
                    results[i] = (r.start_state, r.start_logits.float())
                continue
            hit, state, logits = self.cache.lookup(r.prompt_ids, r.adapter)
            if hit == len(r.prompt_ids) and state is not None and logits is not None:
                results[i] = (state, logits)
            elif hit and state is not None:
                continued.append((i, state, list(r.prompt_ids[hit:])))
            else:
                fresh.setdefault((r.adapter, tuple(r.prompt_ids)), []).append(i)
        # a request asking for a cache point inside its prompt is split there
        for key, idx in list(fresh.items()):
            adapter, ids = key
            cut = max((c for c in new[idx[0]].cache_at if 0 < c < len(ids)), default=0)
            if cut:
                del fresh[key]
                state, logits = self.prefill(ids[:cut], adapter=adapter)
                self.cache.put(ids[:cut], state, logits, adapter)
                continued.extend((i, state, list(ids[cut:])) for i in idx)
        keys = sorted(fresh, key=lambda k: len(k[1]))
        for group in self._groups([len(k[1]) for k in keys]):
            gkeys = [keys[j] for j in group]
            states, logits = self._prefill_fresh([list(k[1]) for k in gkeys], [k[0] for k in gkeys])
            for row, key in enumerate(gkeys):
                st, lg = states.select(slice(row, row + 1)), logits[row]
                self.cache.put(key[1], st, lg, key[0])
                for i in fresh[key]:
                    results[i] = (st, lg)
        by_len: dict[int, list[tuple[int, RWKVState, list[int]]]] = {}
        for item in continued:
            by_len.setdefault(len(item[2]), []).append(item)
        for length, items in by_len.items():
            for lo in range(0, len(items), max(1, self.prefill_tokens // max(length, 1))):
                part = items[lo : lo + max(1, self.prefill_tokens // max(length, 1))]
                start = RWKVState.cat([s for _, s, _ in part])
                tokens = torch.tensor([ids for _, _, ids in part], device=self.device)
                states, logits = self._run(tokens, start, adapters=[new[i].adapter for i, _, _ in part])
                for row, (i, _, _) in enumerate(part):
                    st, lg = states.select(slice(row, row + 1)), logits[row]
                    r = new[i]
                    if r.start_state is None:
                        self.cache.put(r.prompt_ids, st, lg, r.adapter)
                    results[i] = (st, lg)
        assert all(x is not None for x in results)
        done = [x for x in results if x is not None]
        return RWKVState.cat([s for s, _ in done]), torch.stack([lg for _, lg in done])

    def _groups(self, lengths: list[int]) -> list[list[int]]:
        """Split prompts (sorted by length) into prefill batches: the token budget, and little padding."""
        groups: list[list[int]] = []
        for j, n in enumerate(lengths):
            if groups:
                g = groups[-1]
                rows, longest, shortest = len(g) + 1, n, lengths[g[0]]
                if rows * longest <= max(self.prefill_tokens, longest) and shortest * 4 >= longest * 3:
                    g.append(j)
                    continue
            groups.append([j])
        return groups

    def _prefill_fresh(self, prompts: list[list[int]], adapters: list[int]) -> tuple[RWKVState, torch.Tensor]:
        """Prefill prompts from a zero state, left-padded: a reset at each first token hides the padding."""
        import torch

        T = max(len(p) for p in prompts)
        tokens = torch.zeros(len(prompts), T, dtype=torch.long)
        reset = torch.zeros(len(prompts), T, dtype=torch.bool)
        for row, p in enumerate(prompts):
            tokens[row, T - len(p) :] = torch.tensor(p)
            reset[row, T - len(p)] = True
        need_reset = any(len(p) != T for p in prompts)
        return self._run(tokens.to(self.device), None, reset.to(self.device) if need_reset else None, adapters)

    def _run(
        self, tokens: torch.Tensor, state: RWKVState | None, reset: torch.Tensor | None = None,
        adapters: list[int] | None = None,
    ) -> tuple[RWKVState, torch.Tensor]:  # fmt: skip
        """model.forward over (B, T) tokens in chunks of the token budget; the final state and logits (B, V).

        adapters: the adapter of each row (None: the base for all)."""
        B, T = tokens.shape
        if self.adapters is not None:
            self.adapters.for_prefill(adapters or [0] * B)
        chunk = max(1, self.prefill_tokens // B)
        logits = None
        for lo in range(0, T, chunk):
            part_reset = None if reset is None else reset[:, lo : lo + chunk]
            out, state = self.model(tokens[:, lo : lo + chunk], state, reset=part_reset, last_only=True)
            logits = out[:, -1].float()
        assert state is not None and logits is not None
        return state, logits

    # ------------------------------------------------------------------ per-row settings

    def _params_tensors(self) -> tuple[torch.Tensor, ...]:
        import torch

        if self._row_params is None:
            ps = [r.params for r in self.rows]
            f = lambda vals: torch.tensor(vals, dtype=torch.float32, device=self.device)
            self._row_params = (
                f([p.temperature for p in ps]),
                f([p.top_p for p in ps]),
                torch.tensor([p.top_k for p in ps], dtype=torch.long, device=self.device),
                f([p.presence_penalty for p in ps]),
                f([p.frequency_penalty for p in ps]),
                f([p.penalty_decay for p in ps]),
            )
        return self._row_params

    def _adapter_ids(self) -> torch.Tensor:
        import torch

        if self._row_adapters is None:
            self._row_adapters = torch.tensor([r.adapter for r in self.rows], dtype=torch.long, device=self.device)
        return self._row_adapters

    def _penalty_book(self) -> Any:
        import torch

        if self._penalties is None:
            texts = [self.tokenizer.decode_bytes([t]) for t in range(self.vocab_size)]
            weights = torch.tensor(frequency_weights(texts), device=self.device)
            self._penalties = Penalties(self.capacity, weights)
            for i in range(len(self.rows)):
                self._penalties.clear_row(i)
        return self._penalties


# ---------------------------------------------------------------------------------------------- loading


def load_engine(
    model: Path,
    adapter: Path | None = None,
    *,
    adapters: Sequence[tuple[str, Path]] = (),
    device: Device = "auto",
    dtype: DType = "auto",
    max_batch: int = 32,
    prefix_cache_mb: float = 256,
    quant: Quant = "none",
    quantize_head: bool = False,
) -> Engine:
    """Load the model (and adapter) with `rwkv1c.model.loader.load_model` and make an engine over it.

    adapters: (name, folder) pairs attached together, unmerged, for requests to pick (`multi_lora`);
    not with `adapter`, which applies one adapter to the model for every request.
    """
    from rwkv1c.model.loader import load_model, resolve_device, resolve_dtype
    from rwkv1c.model.tokenizer import get_tokenizer

    if adapter is not None and adapters:
        raise ValueError("pass one adapter applied to every request, or several to choose from, not both")
    dev = resolve_device(device)
    rows = None
    quantised = {"quant": quant, "quantize_head": quantize_head}
    if adapters:
        from rwkv1c.infer.multi_lora import attach_adapters, read_adapters

        read_adapters(adapters)  # every folder checked before the slow load
        net = load_model(model, None, device=dev, dtype=resolve_dtype(dtype, dev), **quantised)  # type: ignore[arg-type]
        rows = attach_adapters(net, Path(model), adapters)
    else:
        net = load_model(model, adapter, device=dev, dtype=resolve_dtype(dtype, dev), **quantised)  # type: ignore[arg-type]
    return Engine(net, get_tokenizer(), max_batch=max_batch, prefix_cache_mb=prefix_cache_mb, adapters=rows)


def describe(engine: Engine) -> str:
    """One line for stderr: model size, device, dtype, decode path."""
    from rwkv1c.model.quant import is_int8_linear

    cfg = engine.model.config
    d = engine.decoder
    key: Any = engine.model.get_submodule("blocks.0.att.key")
    key = getattr(key, "base_layer", key)  # under an adapter's LoRA wrapper
    stored = "int8" if is_int8_linear(key) else "nf4" if type(key).__name__ == "Linear4bit" else "full precision"
    return (
        f"model: {cfg.n_layer} layers x {cfg.n_embd}, vocab {cfg.vocab_size}; {engine.device.type} "
        f"{str(engine.dtype).replace('torch.', '')}, block linears {stored}; decode: {d.kernels} kernels"
        f"{', CUDA graphs' if d.cuda_graphs else ''}; batch up to {engine.capacity}"
    )


_ids = itertools.count()


def new_id(prefix: str) -> str:
    """A process-unique id such as `cmpl-1a2b3c`."""
    return f"{prefix}-{time.time_ns() & 0xFFFFFFFF:08x}{next(_ids):04x}"
