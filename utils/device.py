"""Device choice and distributed (torchrun) state, read once in main() and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a torchrun job (rank -1: not distributed)."""

    rank: int = -1
    local_rank: int = -1
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank in (-1, 0)

    @property
    def enabled(self) -> bool:
        return self.rank != -1


def read_distributed_context() -> DistributedContext:
    """Read the variables torchrun sets; call once from main()."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistributedContext()
    return DistributedContext(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                              world_size=int(os.environ["WORLD_SIZE"]))


def select_device(device: str = "", context: DistributedContext | None = None) -> torch.device:
    """'' picks CUDA when available; 'cpu', '0', '0,1' or 'cuda:0' as YOLOv5 accepts them."""
    spec = str(device).strip().lower().replace("cuda:", "")
    if spec == "cpu" or (spec == "" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device} requested but CUDA is not available; use --device cpu")
    if context is not None and context.enabled:
        torch.cuda.set_device(context.local_rank)
        return torch.device("cuda", context.local_rank)
    first = spec.split(",")[0] if spec else "0"
    return torch.device("cuda", int(first))


def init_process_group(context: DistributedContext, device: torch.device) -> None:
    """NCCL on GPU, gloo on CPU."""
    if context.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel (recipes, EMA and the loss see its names)."""
    return model.module if isinstance(model, (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel)) else model
