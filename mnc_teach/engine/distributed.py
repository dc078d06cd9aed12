"""Training on several processes at once: torchrun, DistributedDataParallel and the few
collectives the loop needs.

    torchrun --nproc_per_node=4 -m mnc_teach train --preset voc-vgg16-paper   # 4 GPUs
    torchrun --nproc_per_node=2 -m mnc_teach train --device cpu               # 2 CPU processes

torchrun starts N copies of the command and tells each who it is through environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`current_world`
reads them, and with ``WORLD_SIZE`` above 1 :func:`process_group` joins the processes (NCCL
between GPUs, gloo between CPUs), each on its own GPU ``cuda:LOCAL_RANK``, and leaves the group
at the end.

What stays the same: the config describes one optimiser step of all processes together
(``images_per_batch x accumulate`` images); each process takes its share
(:func:`mnc_teach.engine.batches.split_step`), and DistributedDataParallel averages the
gradients, so N processes make the steps one process makes, N times faster. Process 0 (the
*main* process) writes the checkpoints and the history and calls the callbacks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mnc_teach.engine.inference import resolve_device

__all__ = [
    "SINGLE_PROCESS", "World", "any_process", "barrier", "broadcast_buffers", "current_world",
    "grad_sync", "main_process_first", "process_group", "step_seed", "sum_over_processes",
    "world_from_env", "wrap_model",
]


@dataclass(frozen=True)
class World:
    """The processes training together: this one is ``rank`` of ``size``, on the GPU
    ``local_rank`` of its machine. ``World()`` is a run on its own."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Process 0: it writes the checkpoints and the history and calls the callbacks."""
        return self.rank == 0


SINGLE_PROCESS = World()  # a run on its own


def world_from_env(environ: Mapping[str, str] = os.environ) -> World:
    """This process as torchrun describes it (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); ``World()``
    when ``WORLD_SIZE`` is unset (a run on its own)."""
    if "WORLD_SIZE" not in environ:
        return SINGLE_PROCESS
    try:
        size = int(environ["WORLD_SIZE"])
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE {environ.get('WORLD_SIZE')!r}, RANK {environ.get('RANK')!r} and "
            f"LOCAL_RANK {environ.get('LOCAL_RANK')!r} must be integers; start the processes "
            "with torchrun"
        ) from None
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ValueError(
            f"RANK {rank} of WORLD_SIZE {size} (LOCAL_RANK {local_rank}) is not a process of "
            "the group; start the processes with torchrun"
        )
    return World(rank=rank, size=size, local_rank=local_rank)


def _device_of(world: World, device: str | torch.device | None) -> torch.device:
    """``device`` for this process: the GPU ``cuda:LOCAL_RANK`` when CUDA is used."""
    device = resolve_device(device)
    if world.size == 1 or device.type != "cuda":
        return device
    if device.index is not None and device.index != world.local_rank:
        raise ValueError(
            f"device {device} was asked for, but with torchrun each process uses the GPU of its "
            f"LOCAL_RANK (cuda:{world.local_rank}); pass --device cuda"
        )
    if world.local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"process {world.rank} would use cuda:{world.local_rank}, but this machine has "
            f"{torch.cuda.device_count()} GPUs; start at most that many processes per machine "
            "(torchrun --nproc_per_node)"
        )
    return torch.device("cuda", world.local_rank)


def current_world() -> World:
    """This process's place: in the group already joined (by the caller), else as torchrun's
    environment variables describe it (:func:`world_from_env`)."""
    if dist.is_available() and dist.is_initialized():
        rank, gpus = dist.get_rank(), torch.cuda.device_count()
        local_rank = int(os.environ.get("LOCAL_RANK", rank % gpus if gpus else rank))
        return World(rank=rank, size=dist.get_world_size(), local_rank=local_rank)
    return world_from_env()


@contextmanager
def process_group(
    world: World, device: str | torch.device | None = None
) -> Iterator[torch.device]:
    """Join the processes of ``world`` for the block; yields this process's device.

    On its own (``world.size`` 1) it only resolves ``device``. Otherwise each process takes the
    GPU ``cuda:LOCAL_RANK`` (or stays on the CPU), joins the group torchrun's ``MASTER_ADDR`` and
    ``MASTER_PORT`` name (NCCL on CUDA, gloo on the CPU) and leaves it at the end, also on an
    error. A group already joined (by the caller) is used as it is and left to the caller.
    """
    device = _device_of(world, device)
    if world.size > 1 and not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; train in one process")
    if world.size == 1 or dist.is_initialized():
        yield device
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def wrap_model(model: nn.Module, *, world: World, device: torch.device) -> nn.Module | None:
    """``DistributedDataParallel(model)`` when several processes train, else None.

    Every trainable parameter of MNC gets a gradient in every step (its losses stay connected to
    each head even without foreground RoIs), so DDP needs no ``find_unused_parameters`` search.
    Wrapping copies process 0's weights and buffers to the others."""
    if world.size == 1:
        return None
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def grad_sync(model: nn.Module, *, sync: bool):
    """The block's backward averages the gradients over the processes only when ``sync``:
    accumulated micro-batches before the last one skip that exchange (DDP's ``no_sync``)."""
    if isinstance(model, DistributedDataParallel) and not sync:
        return model.no_sync()
    return nullcontext()


def sum_over_processes(
    values: list[float], *, world: World, device: torch.device
) -> list[float]:
    """Each value summed over the processes (one all-reduce); ``values`` itself on its own."""
    if world.size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)  # (V,)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_process(flag: bool, *, world: World, device: torch.device) -> bool:
    """Whether ``flag`` is set in any process: one decision for all (e.g. to stop)."""
    return sum_over_processes([float(flag)], world=world, device=device)[0] > 0


def barrier(world: World, device: torch.device) -> None:
    """Wait until every process has arrived here."""
    if world.size > 1:
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


@contextmanager
def main_process_first(world: World, device: torch.device) -> Iterator[None]:
    """Process 0 runs the block first (e.g. generating a dataset), the others after it."""
    if not world.is_main:
        barrier(world, device)
    yield
    if world.is_main:
        barrier(world, device)


def broadcast_buffers(model: nn.Module, *, world: World) -> None:
    """Give every process process 0's buffers (BatchNorm statistics, which each process
    updates from its own images)."""
    if world.size == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def step_seed(seed: int, *, rank: int, step: int) -> int:
    """The seed process ``rank`` draws step ``step``'s random samples from (anchors, RoIs): the
    processes draw different samples, and a resumed run draws what the uninterrupted one drew
    (a function of ``(seed, rank, step)``, not of a saved RNG state)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])  # < 2**32: NumPy's
