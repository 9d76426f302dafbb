"""Meta-training and evaluation across processes with torch.distributed, started by `torchrun`.

Every rank draws the same meta-batch from the same seeded sampler and computes the meta-gradient of its own
contiguous share of the tasks; the gradients, weighted by each share's size, are summed across ranks before
the optimiser steps. So N ranks take exactly the step one process takes (up to summation order), for every
algorithm: each one leaves its meta-gradient in `p.grad` (Reptile its mean shift) before `optimizer.step()`.
Without torchrun (no WORLD_SIZE in the environment) nothing here does anything.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from metacore.errors import MetacoreError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    def share(self, count: int) -> range:
        """This rank's contiguous share of `count` items (shares differ in size by at most one)."""
        start = self.rank * count // self.size
        return range(start, (self.rank + 1) * count // self.size)


def current() -> World:
    """The world torchrun described in the environment, or a world of one."""
    if not dist.is_available() or "WORLD_SIZE" not in os.environ:
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun started (gloo on CPU, NCCL on CUDA with one GPU per rank); returns this
    rank's world and device."""
    world = current()
    if world.size == 1:
        return world, device
    if device.type == "cuda":
        if torch.cuda.device_count() <= world.local_rank:
            raise MetacoreError(
                f"rank {world.rank} needs GPU {world.local_rank}, but this machine has {torch.cuda.device_count()}: "
                "start at most one process per GPU (--nproc-per-node), or pass --device cpu"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # A collective whose peer died fails after this timeout instead of hanging for gloo's default 30 minutes.
        timeout = timedelta(seconds=float(os.environ.get("METACORE_DIST_TIMEOUT_S", 600)))
        # Each attempt (torchrun --max-restarts) keeps its keys apart in the launcher's store: a restarted group
        # must not read the addresses its dead predecessors left there.
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world.size, is_master=False, timeout=timeout
        ) if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else None  # fmt: skip
        backend = "nccl" if device.type == "cuda" else "gloo"
        if store is None:
            dist.init_process_group(backend, timeout=timeout)
        else:
            attempt = dist.PrefixStore(f"metacore/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
            dist.init_process_group(backend, store=attempt, rank=world.rank, world_size=world.size, timeout=timeout)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one process per core: each computes its tasks single-threaded
    return world, device


def finish(code: int) -> int:
    """End a command that succeeded. Under torchrun: wait until every rank is done (rank 0 may still be saving),
    leave the group, and exit at once. Letting the interpreter unwind instead sometimes aborted a rank in gloo's
    teardown ("terminate called without an active exception": 1 run in 6 after a torchrun restart), failing a
    job whose work was done."""
    if not (dist.is_available() and dist.is_initialized()):
        return code
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def leave() -> None:
    """Tear the process group down (after a failure: no barrier, a peer may be gone)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_same_everywhere(world: World, settings: dict) -> None:
    """Every rank must have been started with the same settings; else one clear line (not a hang later)."""
    if world.size == 1:
        return
    mine = json.dumps(settings, sort_keys=True, default=str)
    everyone: list[str | None] = [None] * world.size
    dist.all_gather_object(everyone, mine)
    differ = [rank for rank, theirs in enumerate(everyone) if theirs != everyone[0]]
    if differ:
        first = json.loads(everyone[differ[0]])
        keys = sorted(k for k in settings if first.get(k) != json.loads(everyone[0]).get(k))
        raise MetacoreError(f"rank {differ[0]} was started with other settings than rank 0 ({', '.join(keys)})")


def sum_across(world: World, values: list[float]) -> list[float]:
    """Element-wise sums of `values` over all ranks (float64)."""
    if world.size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_in_order(world: World, items: list[tuple[int, object]]) -> list:
    """All ranks' (index, value) pairs, as one list of values in index order, on every rank."""
    if world.size == 1:
        return [value for _, value in sorted(items, key=lambda pair: pair[0])]
    everyone: list[list | None] = [None] * world.size
    dist.all_gather_object(everyone, items)
    return [value for _, value in sorted((pair for part in everyone for pair in part), key=lambda pair: pair[0])]


class SummedGradients:
    """An optimiser whose `step` first turns this rank's meta-gradient (the mean over its `share` of the tasks)
    into the whole meta-batch's: weighted by share / meta-batch and summed across ranks."""

    def __init__(self, optimizer: torch.optim.Optimizer, world: World, weight: float) -> None:
        self.optimizer, self.world, self.weight = optimizer, world, weight

    def step(self) -> None:
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:  # None on every rank alike (e.g. ANIL's body): the optimiser skips it
                    p.grad.mul_(self.weight)
                    dist.all_reduce(p.grad)
        self.optimizer.step()

    def __getattr__(self, name: str):  # zero_grad, param_groups, state_dict, load_state_dict ...
        return getattr(self.optimizer, name)
