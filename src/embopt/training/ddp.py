"""Data-parallel distillation with ``torch.distributed`` (gloo on CPU, NCCL on GPUs), under ``torchrun``.

Each step's batch is split across the ranks and every rank's gradients are all-reduced, weighted by its
share of the rows (:func:`all_reduce_gradients`: what ``DistributedDataParallel`` does, in one message
after ``backward``, the SentenceTransformer left unwrapped). With ``distill.nproc: N > 1`` the distill
stage launches itself under :func:`torchrun`; rank 0 alone evaluates, checkpoints, logs and writes the
outputs. The README (data-parallel distillation) says how close that is to one process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from embopt.errors import EmboptError

log = logging.getLogger(__name__)


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_gradients(params: Sequence, weight: float, extra: float) -> float:
    """Sum ``weight`` x gradient over the ranks; return the summed ``weight`` x ``extra``.

    ``weight`` is this rank's share of the batch's rows, so the sum is the whole batch's gradient.
    A parameter keeps ``grad=None`` only when no rank gave it one (AdamW then leaves it alone,
    weight decay included, as in one process). ``extra`` (the loss) rides in the same message.
    """
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat([g.reshape(-1) for g in grads] + [has, has.new_tensor([extra])]) * weight
    flat[-1 - len(params):-1] = has  # presence flags are counted, not weighted
    dist.all_reduce(flat)
    chunks = flat[:-1 - len(params)].split([g.numel() for g in grads])
    for p, g, chunk, present in zip(params, grads, chunks, flat[-1 - len(params):-1].tolist(), strict=True):
        p.grad = chunk.view_as(g).clone() if present else None
    return float(flat[-1])


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (the early-stopping decision: only rank 0 evaluates)."""
    import torch.distributed as dist

    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rng_states() -> list:
    """Every rank's CPU RNG state (dropout streams differ per rank), for rank 0's checkpoint."""
    import torch
    import torch.distributed as dist

    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, torch.get_rng_state())
    return states


def under_torchrun() -> bool:
    """True in a process that torchrun started (it sets ``TORCHELASTIC_RUN_ID`` for every rank)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def torchrun(nproc: int, module: str, threads: int) -> int:
    """``torchrun --standalone --nproc-per-node nproc -m module``; its exit code (a failed rank fails it).

    ``threads``: OpenMP/torch threads per rank (torchrun would otherwise set 1 and warn).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", module]
    log.info("data-parallel distillation: %s (%d torch threads per rank)", " ".join(cmd[1:]), threads)
    return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def init_from_env(device: str) -> tuple[int, int, str]:
    """Join torchrun's process group (gloo on CPU, NCCL on GPUs); (rank, world size, this rank's device).

    Outside torchrun: (0, 1, ``device``) and no group. On GPUs each rank takes ``cuda:LOCAL_RANK``.
    """
    import torch
    import torch.distributed as dist

    world, cuda = int(os.environ.get("WORLD_SIZE", "1")), str(device).startswith("cuda")
    if world < 2:
        return 0, 1, device
    if cuda:
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise EmboptError(f"distill.nproc: rank {local} has no GPU; this machine has "
                              f"{torch.cuda.device_count()}")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), world, device


def leave_group() -> None:
    """Destroy the process group, when there is one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
