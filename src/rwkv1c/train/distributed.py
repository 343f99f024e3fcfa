"""Several GPUs (or CPU processes) through torchrun and torch.distributed DDP.

`rwkv1c train --devices N` relaunches itself as `torchrun --nproc_per_node N -m rwkv1c train ...`;
each process then reads its rank from the variables torchrun sets (at run time, never at import).
NCCL on GPUs, gloo on CPU. The same launcher takes a run to several machines (`--nnodes`,
`--rdzv-endpoint`; see docs/training.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank, world size, and the device it trains on."""

    rank: int = 0
    world: int = 1
    device: Any = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    """Processes in the job torchrun started (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank in the job torchrun started (0 when not under torchrun)."""
    return int(os.environ.get("RANK", "0"))


def init(device_kind: str) -> DistInfo:
    """Join the process group when started by torchrun; otherwise a single process on `device_kind`."""
    import torch

    if not launched_by_torchrun():
        return DistInfo(device=torch.device(device_kind))
    import torch.distributed as dist

    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device_kind == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    return DistInfo(rank=rank, world=world, device=device)


def shutdown(info: DistInfo, *, together: bool = True) -> None:
    """Leave the process group. `together`: wait for every rank first (a rank that tears its connections
    down while another still finishes its last write makes gloo abort that one at exit); after a failure
    the others may never arrive, so a failing rank leaves alone."""
    import torch.distributed as dist

    if info.world > 1 and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def all_sum(info: DistInfo, values: list[float]) -> list[float]:
    """Element-wise sum over all processes (identity for one)."""
    if info.world == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()  # type: ignore[no-any-return]


def gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order (on every process)."""
    if info.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def relaunch(nproc: int, args: list[str]) -> int:
    """Run `rwkv1c <args>` as `nproc` processes on this machine under torchrun; return its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "rwkv1c", "--", *args]  # "--": torchrun would read --run as its own --run-path
    print("launching: " + " ".join(cmd), file=sys.stderr)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130
