"""Data-parallel distillation with ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

Each step's batch (``distill.batch_size`` rows, the same batches as one process would use) is
split across the N ranks; after the backward pass every rank's gradients are all-reduced,
weighted by its share of the rows, so each rank applies the gradient of the whole batch. For the
row-averaged losses (``mse``, ``cosine``, ``mse+cosine``) with dropout off that is the
one-process update up to float rounding; the in-batch structure losses (``sim``, ``kl``) then see
sub-batches, and dropout draws differ per rank, so those runs differ from one process by more.

This is what ``DistributedDataParallel`` does, done with one coalesced ``all_reduce`` after
``backward``: the SentenceTransformer stays unwrapped (checkpoints keep their keys), and
parameters that get no gradient (BERT's unused pooler) need no ``find_unused_parameters``.

Launch: :func:`train_data_parallel` (used by the distill stage when ``distill.processes > 1``)
runs rank 0 in the calling process, which alone evaluates, checkpoints and logs to MLflow, and
spawns ranks 1..N-1 with ``torch.multiprocessing``. Under ``torchrun``, initialise the process
group yourself (``torch.distributed.init_process_group()``) and call
:func:`embopt.training.distill.train_student` on every rank: it picks up rank and world size.
"""

from __future__ import annotations

import copy
import logging
import socket
from collections.abc import Sequence

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
    offset = 0
    for p, g, present in zip(params, grads, flat[-1 - len(params):-1].tolist(), strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).clone() if present else None
        offset += n
    return float(flat[-1])


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (the early-stopping decision: only rank 0 evaluates)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(flag)])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return bool(t.item())


def gather_rng_states() -> list:
    """Every rank's CPU RNG state (dropout streams differ per rank), for rank 0's checkpoint."""
    import torch
    import torch.distributed as dist

    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, torch.get_rng_state())
    return states


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, address: str, device: str) -> None:
    import torch.distributed as dist

    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world)


def _rank_device(device: str, rank: int) -> str:
    return f"cuda:{rank}" if str(device).startswith("cuda") else str(device)


def _worker(index: int, world: int, address: str, device: str, threads: int, args: tuple,
            kwargs: dict) -> None:
    """Ranks 1..N-1: train in step with rank 0; the result is rank 0's."""
    import torch
    import torch.distributed as dist

    from embopt.training.distill import train_student

    rank = index + 1
    # torch.multiprocessing hands tensors over in shared memory: without a private copy this rank
    # would update rank 0's very weights, and every step would be applied N times.
    args = (copy.deepcopy(args[0]), *args[1:])
    torch.set_num_threads(threads)
    _init(rank, world, address, device)
    try:
        train_student(*args, device=_rank_device(device, rank), on_metrics=None, **kwargs)
    finally:
        dist.destroy_process_group()


def train_data_parallel(processes: int, *args, device: str = "cpu", threads: int | None = None, **kwargs):
    """:func:`~embopt.training.distill.train_student` on ``processes`` ranks; returns rank 0's result.

    Rank 0 is this process (its ``on_metrics`` and the student passed in are the ones trained and
    logged); ranks 1..N-1 are spawned and get pickled copies of the arguments. ``threads``: torch
    threads per rank (default: this process's count divided by ``processes``).
    """
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from embopt.training.distill import train_student

    if processes < 2:
        return train_student(*args, device=device, **kwargs)
    if str(device).startswith("cuda") and torch.cuda.device_count() < processes:
        raise ValueError(f"distill.processes={processes} needs as many GPUs; this machine has "
                         f"{torch.cuda.device_count()}")
    threads = threads or max(1, torch.get_num_threads() // processes)
    address = f"tcp://127.0.0.1:{_free_port()}"
    worker_kwargs = {k: v for k, v in kwargs.items() if k != "on_metrics"}
    ctx = mp.start_processes(_worker, args=(processes, address, device, threads, args, worker_kwargs),
                             nprocs=processes - 1, join=False, start_method="spawn")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    log.info("data-parallel distillation: %d processes (gloo/nccl at %s), %d torch threads each", processes,
             address, threads)
    try:
        _init(0, processes, address, device)
        try:
            result = train_student(*args, device=_rank_device(device, 0), **kwargs)
        finally:
            dist.destroy_process_group()
        while not ctx.join():
            pass
    except BaseException:
        for p in ctx.processes:  # a failed rank 0 must not leave the others waiting in a collective
            if p.is_alive():
                p.terminate()
        raise
    finally:
        torch.set_num_threads(previous)
    return result
