"""Data parallelism for evaluation: one process per device, started by ``torchrun`` or
``accelerate launch``.

The launcher sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; lmms-eval splits each task's
documents over the ranks and gathers the answers. What pact adds: each rank loads its
model onto its own device (``cuda:LOCAL_RANK``, or the CPU), joins the process group
before lmms-eval's evaluator needs it (gloo on CPU, NCCL on GPUs), and its reduction
figures are summed over the ranks once the requests are answered. Free of lmms-eval;
accelerate is imported only when there are several processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the launched ones."""

    rank: int = 0
    """Global rank (``RANK``)."""
    local_rank: int = 0
    """Rank on this machine (``LOCAL_RANK``): the index of its GPU."""
    world_size: int = 1
    """Processes in all (``WORLD_SIZE``)."""

    @classmethod
    def from_env(cls) -> Ranks:
        """The launcher's environment; one process when it says nothing."""
        read = os.environ.get
        world = int(read("WORLD_SIZE", "1"))
        return cls(int(read("RANK", "0")), int(read("LOCAL_RANK", read("RANK", "0"))), world)

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """The process that prints and writes."""
        return self.rank == 0


def rank_device(device: str | None, ranks: Ranks, placement: dict | None = None) -> str:
    """This rank's device: ``device`` alone; with several processes, ``cuda:LOCAL_RANK``
    (when ``device`` is cuda or unset on a CUDA machine) or ``cpu``; the first GPU of its
    share when ``placement`` (:func:`rank_placement`) spreads it over several.

    A ``cuda:N`` naming one GPU cannot hold every rank and is refused by name.
    """
    wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if placement and "max_memory" in placement:
        return f"cuda:{min(placement['max_memory'])}"
    if not ranks.parallel:
        return wanted
    parsed = torch.device(wanted)
    if parsed.type != "cuda":
        return wanted
    if parsed.index is not None:
        raise ValueError(
            f"device {wanted!r} names one GPU, but {ranks.world_size} processes were launched "
            "and each takes cuda:LOCAL_RANK; pass device=cuda (or leave it unset)"
        )
    return f"cuda:{ranks.local_rank}"


def join(device: str, ranks: Ranks):
    """Join the launcher's process group (opening it if nobody has) and return an
    ``accelerate.Accelerator`` on it, which lmms-eval's evaluator gathers counts with.

    On CPU the Accelerator must be told so (``cpu=True``): otherwise it sees no GPU, runs
    as a single process, and the evaluator's gathers return this rank's numbers alone.
    """
    import torch.distributed as dist
    from accelerate import Accelerator

    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if dist.get_world_size() != ranks.world_size:
        raise RuntimeError(
            f"the process group has {dist.get_world_size()} ranks, WORLD_SIZE says "
            f"{ranks.world_size}"
        )
    return Accelerator(cpu=not cuda)


def gather(value, ranks: Ranks) -> list:
    """``value`` of every rank, in rank order (``[value]`` in a single process)."""
    import torch.distributed as dist

    if not ranks.parallel or not dist.is_initialized():
        return [value]
    values: list = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def rank_placement(device_map: str | None, ranks: Ranks) -> dict:
    """transformers' placement arguments for this rank's checkpoint (``device_map``,
    ``max_memory``); empty when it goes to one device whole. Alone, ``device_map`` as
    given. With several processes on a machine,
    ``auto`` spreads the model over this rank's share of the machine's GPUs (the GPUs
    split evenly, in order, among ``LOCAL_WORLD_SIZE`` processes); a fixed placement
    cannot serve every rank and is refused."""
    if device_map is None:
        return {}
    if not ranks.parallel:
        return {"device_map": device_map}
    if device_map != "auto":
        raise ValueError(
            f"device_map={device_map!r} places the model for one process; with "
            f"{ranks.world_size} processes use device_map=auto (each takes its share of the "
            "GPUs) or leave it unset (each takes cuda:LOCAL_RANK)"
        )
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world_size))
    gpus = torch.cuda.device_count()
    share = gpus // local_world
    if share < 1:
        raise ValueError(
            f"device_map=auto with {local_world} processes on this machine needs at least "
            f"one GPU each; torch sees {gpus}"
        )
    mine = range(ranks.local_rank * share, (ranks.local_rank + 1) * share)
    return {"device_map": "auto", "max_memory": {gpu: _free_memory(gpu) for gpu in mine}}


def _free_memory(gpu: int) -> int:
    free, _ = torch.cuda.mem_get_info(gpu)
    return free
