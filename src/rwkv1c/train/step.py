"""One micro-batch's forward and backward: eager, or replayed from a CUDA graph.

A LoRA step of a 1.5B model at 1024 tokens is about 40 ms of GPU work but, launched op by op from
Python (peft layers, fla's autograd functions, thousands of small kernels), about 200 ms of host
time: the GPU waits most of the step. A CUDA graph records the whole forward and backward once and
replays it with one launch. That needs a step whose shapes never depend on the data and that never
waits for the GPU: document resets go into the WKV kernel as soft resets (`rwkv1c.model.wkv`), the
loss runs over every position (`loss.py`), and the batch is copied into fixed input buffers.

The graph is captured at the first micro-batch, after a few eager warm-up passes (Triton autotuning,
torch.compile, cuBLAS workspaces); gradients accumulate into `.grad` tensors that keep their
addresses, so the optimizer must zero them in place (`zero_grad(set_to_none=False)`). If capture fails,
the run continues eagerly and says why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rwkv1c.data.packing import Batch

FIELDS = ("tokens", "reset", "targets", "weight")
WARMUP_PASSES = 2


GRAPH_TOKENS = 8192  # CUDA_GRAPHS=auto replays steps of at most this many tokens per micro-batch (see below)


def use_cuda_graphs(
    setting: str, device: str, world: int, quant: str, lora_dropout: float, tokens: int = GRAPH_TOKENS
) -> bool:
    """CUDA_GRAPHS=auto captures the step on a single GPU when a micro-batch holds at most GRAPH_TOKENS
    tokens (micro_bsz x ctx_len): there the step waits on the host, and a replay takes that wait away
    (1.5B LoRA on an H200: 5,310 -> 17,863 tokens/s at 1024 tokens, 19,070 -> 21,679 at 4096). Larger
    micro-batches keep the GPU busy by themselves and gain more from torch.compile's fused kernels (COMPILE
    =auto), which the replayed step goes without: 40,912 compiled against 26,654 replayed at 4 x 4096.
    Never with int8 layers (bitsandbytes' int8 matmul picks outlier columns at run time: data-dependent
    shapes) nor with LoRA dropout (random masks inside recomputed blocks). `on` asks for it anyway where it
    can run at all."""
    if device != "cuda" or world > 1:
        return False
    if setting == "auto":
        return quant != "int8" and lora_dropout == 0.0 and tokens <= GRAPH_TOKENS
    return setting == "on"


def to_device(batch: Batch, device: Any) -> tuple[torch.Tensor, ...]:
    """The batch's arrays as tensors on `device` (through pinned memory on a GPU: the copy is async)."""
    import torch

    out = []
    for f in FIELDS:
        t = torch.from_numpy(getattr(batch, f))
        if getattr(device, "type", device) == "cuda":
            t = t.pin_memory()
        out.append(t.to(device, non_blocking=True))
    return tuple(out)


class StepRunner:
    """Forward + backward of one micro-batch; returns the summed loss (a device tensor, not synced).

    `graphs`: capture the step in a CUDA graph at the first call (GPU only); otherwise run eagerly.
    `note` receives one line when capture is given up.
    """

    def __init__(
        self,
        module: nn.Module,
        params: list[torch.nn.Parameter],
        device: Any,
        autocast: Callable[[], Any],
        *,
        graphs: bool,
        note: Callable[[str], None] = print,
    ) -> None:
        self.module, self.params, self.device, self.autocast = module, params, device, autocast
        self.graphs = graphs
        self.note = note
        self._graph: Any = None
        self._inputs: tuple[torch.Tensor, ...] = ()
        self._scale: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(self, batch: Batch, scale: float) -> torch.Tensor:
        if not self.graphs:
            return self._eager(to_device(batch, self.device), scale)
        if self._graph is None:
            try:
                self._capture(batch)
            except Exception as exc:  # an op that cannot be captured: train on, eagerly
                self.graphs = False
                self._graph = None
                for p in self.params:
                    p.grad = None
                self.note(f"CUDA graphs off ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); training eagerly")
                return self._eager(to_device(batch, self.device), scale)
        assert self._scale is not None and self._loss is not None
        for static, new in zip(self._inputs, to_device(batch, self.device), strict=True):
            static.copy_(new, non_blocking=True)
        self._scale.fill_(scale)
        self._graph.replay()
        return self._loss.detach().clone()

    def _eager(self, inputs: tuple[torch.Tensor, ...], scale: float) -> torch.Tensor:
        with self.autocast():
            loss = self.module(*inputs)
        (loss * scale).backward()
        return loss.detach()

    def _capture(self, batch: Batch) -> None:
        import torch

        if any(p.grad is not None and bool(p.grad.any()) for p in self.params):
            raise RuntimeError("capture needs a step that starts from zero gradients")
        self._inputs = tuple(t.clone() for t in to_device(batch, self.device))
        self._scale = torch.zeros((), device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up: autotuning, compilation, workspaces, .grad allocation
            for _ in range(WARMUP_PASSES):
                self._eager(self._inputs, 0.0)
        torch.cuda.current_stream().wait_stream(side)
        for p in self.params:  # the graph accumulates into these very tensors from now on
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            with self.autocast():
                loss = self.module(*self._inputs)
            (loss * self._scale).backward()
        self._loss = loss
        self._graph = graph
