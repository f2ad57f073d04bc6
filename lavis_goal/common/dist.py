"""Process-group helpers that work on CPU (gloo) and GPU (nccl).

LAVIS 1.0.2's ``init_distributed_mode`` always selects CUDA and nccl, and its
runner needs a process group even in a single process, so the entry points
use these helpers instead.
"""

import datetime
import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def backend_device() -> torch.device:
    """Return the device that collectives of the current backend run on."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(run_cfg) -> None:
    """Create the process group for this run and record the choice in ``run_cfg``.

    Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) every rank joins one
    group: nccl when ``run_cfg.device`` is ``cuda`` and CUDA is available,
    gloo otherwise. A plain single-process run gets a one-rank gloo group so
    that barriers and gathers behave the same. ``run_cfg.distributed`` is True
    only when there is more than one rank, which is when the model is wrapped
    in DistributedDataParallel.
    """
    if is_initialized():
        run_cfg.distributed = dist.get_world_size() > 1
        run_cfg.world_size = dist.get_world_size()
        return

    wants_cuda = str(run_cfg.get("device", "cpu")).startswith("cuda")
    if wants_cuda and not torch.cuda.is_available():
        logger.warning("run.device is %s but CUDA is not available; running on CPU", run_cfg.device)
        run_cfg.device = "cpu"
        wants_cuda = False

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        init_method = "env://"
    else:
        rank, world_size, local_rank = 0, 1, 0
        # A one-rank group needs no peers: a file store in a fresh temporary
        # folder avoids opening any port.
        import tempfile

        store_dir = tempfile.mkdtemp(prefix="lavis_goal_pg_")
        init_method = f"file://{os.path.join(store_dir, 'store')}"

    backend = "nccl" if wants_cuda else "gloo"
    if wants_cuda:
        torch.cuda.set_device(local_rank)
        run_cfg.device = f"cuda:{local_rank}"
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        world_size=world_size,
        rank=rank,
        timeout=datetime.timedelta(minutes=int(run_cfg.get("dist_timeout_minutes", 60))),
    )
    run_cfg.distributed = world_size > 1
    run_cfg.world_size = world_size
    run_cfg.rank = rank
    run_cfg.gpu = local_rank
    run_cfg.dist_backend = backend
    logger.info("Process group: backend %s, rank %d of %d", backend, rank, world_size)


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping the autograd graph.

    The backward pass sums each rank's gradient contributions back to the
    owner, so a loss computed on the gathered tensor trains every rank's encoder.
    """
    if get_world_size() == 1:
        return tensor
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(tensor), dim=0)


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    if get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Return the sum of ``tensor`` over ranks (a copy; the input is unchanged)."""
    out = tensor.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(out)
    return out


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()
