"""Data-parallel training: the processes (ranks) of one torchrun job, as the trainer sees them.

A job of N ranks trains one model. Every rank holds the same weights, trains on its own shard of
each epoch's samples (torch's ``DistributedSampler``, seeded by the recipe seed and the epoch),
generates the adversarial examples of its shard itself, and steps from the gradient averaged over
all ranks (``DistributedDataParallel``; the gloo backend, as the trainer runs on the CPU). The
recipe's ``batch_size`` stays the global batch: each rank takes ``batch_size / N`` of it, so a
recipe means the same training on one process or many (a batch size N does not divide is refused).

What must be the same on every rank, and why it is:

- the weights: the same initialisation (the same seed; DDP also copies rank 0's at the start), the
  same all-reduced gradient, the same optimizer arithmetic. :meth:`Ranks.check_same_weights`
  compares them at the end.
- the weight average: each rank folds in its own weights, which are identical, so it is identical.
- AWP's perturbation: taken along the ascent gradient averaged over the ranks (:meth:`Ranks.average`),
  which is the global batch's gradient, so every rank perturbs alike, exactly as one process would
  on the whole batch. A per-rank perturbation would take each shard's gradient at other weights.
- the held-out check: rank 0 runs it and broadcasts its figures with the guard's decision (keep, new
  best, restore the best and stop); every rank applies the decision.
- checkpoints: rank 0 writes them (atomically). On ``--resume`` rank 0 reads the file and broadcasts
  its bytes, and every rank loads them (``weights_only=True``), so no other host needs rank 0's disk.
- random draws (attack starts, augmentation, dropout): a generator per rank and epoch, seeded by
  (seed, epoch, rank), so a run resumed at an epoch boundary draws what an uninterrupted one did.

A single process is ``Ranks()``: rank 0 of 1, for which every method does what the trainer did
before it knew about ranks. The launcher (``bastion train --nproc``) is :mod:`.launcher`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from bastion.errors import ConfigError

BACKEND = "gloo"  # the trainer runs on the CPU; nccl needs CUDA tensors


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank ``rank`` of ``world_size``, ``local_world_size`` on this host."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: it alone runs the held-out check, writes checkpoints and the bundle, and reports."""
        return self.rank == 0

    def batch_size(self, recipe) -> int:
        """This rank's share of the recipe's (global) batch."""
        return per_process_batch(recipe, self.world_size)

    def shard_size(self, n: int) -> int:
        """Samples per rank and epoch (``DistributedSampler`` repeats a few to give every rank as many)."""
        return math.ceil(n / self.world_size)

    def shard(self, n: int, seed: int, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch``: one permutation of ``range(n)`` by (seed, epoch), dealt out."""
        sampler = DistributedSampler(range(n), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler), dtype=torch.long)

    def epoch_generator(self, seed: int, epoch: int) -> torch.Generator:
        """The generator of this rank's draws in ``epoch``; torch's global one (dropout's) is reseeded alike."""
        digest = hashlib.sha256(f"bastion-train:{seed}:{epoch}:{self.rank}".encode()).digest()
        value = int.from_bytes(digest[:8], "little") >> 1
        torch.manual_seed(value)
        return torch.Generator().manual_seed(value)

    def synchronised(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped so that backward averages its gradient over the ranks (itself for one process)."""
        return DistributedDataParallel(model) if self.distributed else model

    def average(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The element-wise mean of ``tensors`` over the ranks, the same bits on every rank."""
        if not self.distributed or not tensors:
            return tensors
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def sum(self, *values: float) -> tuple[float, ...]:
        """Each of ``values`` summed over the ranks (unchanged for one process)."""
        if not self.distributed:
            return values
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return tuple(total.tolist())

    def broadcast_floats(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank (the others pass a list of the same length)."""
        if not self.distributed:
            return values
        shared = torch.tensor(values, dtype=torch.float64)
        dist.broadcast(shared, src=0)
        return shared.tolist()

    def broadcast_bytes(self, data: bytes | None) -> bytes | None:
        """Rank 0's ``data`` (or its None) on every rank; the others pass anything. Tensors, not pickles."""
        if not self.distributed:
            return data
        length = torch.tensor([-1 if data is None else len(data)] if self.is_main else [0], dtype=torch.int64)
        dist.broadcast(length, src=0)
        if length.item() < 0:
            return None
        if length.item() == 0:
            return b""
        buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.is_main
                  else torch.empty(int(length.item()), dtype=torch.uint8))
        dist.broadcast(buffer, src=0)
        return buffer.numpy().tobytes()

    def check_same_weights(self, *modules: nn.Module) -> None:
        """Raise if any rank's weights differ from rank 0's: the invariant every step relies on."""
        if not self.distributed:
            return
        mine = torch.frombuffer(bytearray(weights_digest(*modules)), dtype=torch.uint8)
        every = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine)
        differing = [rank for rank, digest in enumerate(every) if not torch.equal(digest, every[0])]
        if differing:
            raise RuntimeError(f"training processes {differing} ended with weights that differ from rank 0's; "
                               "every step should keep them identical")

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def per_process_batch(recipe, processes: int) -> int:
    """``recipe.optimizer.batch_size`` split over ``processes``; refused unless they divide it."""
    batch = recipe.optimizer.batch_size
    if batch % processes:
        raise ConfigError(f"{recipe.source}: key 'optimizer.batch_size' ({batch}) is the global batch and must "
                          f"split evenly over the {processes} training processes: use a multiple of {processes}")
    return batch // processes


def launched_by_torchrun() -> bool:
    """Whether this process is a rank of a job that torchrun (or another launcher) started."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def join() -> Ranks:
    """This process's :class:`Ranks` (rank 0 of 1 outside a launched job). In a job of several ranks it
    joins the process group (torchrun's ``env://`` rendezvous) and sets torch to this host's cores
    divided by its ranks, so the ranks of one host do not fight over its cores."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Ranks()
    world = int(os.environ["WORLD_SIZE"])
    ranks = Ranks(rank=int(os.environ["RANK"]), world_size=world,
                  local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    torch.set_num_threads(threads_per_process(ranks.local_world_size))
    dist.init_process_group(BACKEND)
    return ranks


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank went away (killed, crashed, stopped)."""
    return isinstance(exc, dist.DistNetworkError) or (isinstance(exc, RuntimeError) and "gloo/transport" in str(exc))


def threads_per_process(processes: int) -> int:
    """This host's usable cores divided among ``processes`` (at least one each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // processes)


def local_replica(model: nn.Module) -> nn.Module:
    """The module a (possibly DDP-wrapped) ``model`` trains: what the inner attack and AWP's ascent use."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def gradient_average(model: nn.Module) -> Callable[[list[torch.Tensor]], list[torch.Tensor]] | None:
    """For a DDP-wrapped ``model``, the mean over its ranks (AWP's ascent gradient); None for one process."""
    if not isinstance(model, DistributedDataParallel):
        return None
    ranks = Ranks(rank=dist.get_rank(), world_size=dist.get_world_size())
    return ranks.average


def weights_digest(*modules: nn.Module) -> bytes:
    """sha256 over the state dicts of ``modules`` (names and exact bits)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, value in module.state_dict().items():
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()
