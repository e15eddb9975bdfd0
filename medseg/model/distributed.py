"""torch.distributed in one place: detect a torchrun launch, pick the backend, and small collectives.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), medseg trains with DistributedDataParallel
(NCCL on CUDA, gloo on CPU) and shards inference; otherwise every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medseg.model.device import resolve_device


@dataclass(frozen=True)
class Context:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.active:
            return [value]
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "auto") -> tuple[Context, torch.device]:
    """Join the process group when launched by torchrun; returns the context and this rank's device."""
    if not launched_by_torchrun():
        return Context(), resolve_device(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        return Context(rank, world, local), torch.device("cuda", local)
    return Context(rank, world, local), torch.device("cpu")


def shutdown(ctx: Context) -> None:
    if ctx.active:
        dist.destroy_process_group()
