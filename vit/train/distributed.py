"""torchrun support: process group, device, DDP wrapper, sharded loader; a no-op on one process."""
from __future__ import annotations


import torch
import torch.distributed as dist
from torch import nn

from vit import env
from vit.train.config import TrainError


class Distributed:
    """torchrun support: process group, device, DDP wrapper, sharded loader. A no-op on one process."""

    def __init__(self):
        self.world = env.number("WORLD_SIZE", 1)
        self.rank = env.number("RANK")
        self.local_rank = env.number("LOCAL_RANK")
        self.is_main = self.rank == 0
        self._own_group = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self._own_group = True

    def device(self, wanted: str) -> torch.device:
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        if wanted == "cuda":
            if not torch.cuda.is_available():
                raise TrainError("device 'cuda' was asked for but no GPU is visible; use --device cpu or auto.")
            return torch.device("cuda", self.local_rank)
        return torch.device(wanted)

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        dev = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def train_loader(self, data, batch_size: int, seed: int, workers: int,
                     weights: torch.Tensor | None = None) -> torch.utils.data.DataLoader:
        """The training images, for every epoch (EpochSampler.set_epoch before each): workers, if any, are
        started once and prepare the next batches while the model trains. `weights`: class-balanced sampling
        (one process; under torchrun the loss is weighted instead, see vit.train.recipe.balancing)."""
        from vit.train.transforms import EpochSampler
        shard = torch.utils.data.DistributedSampler(data, shuffle=True, seed=seed) if self.world > 1 else None
        sampler = EpochSampler(len(data), seed, shard, weights if shard is None else None)
        return torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                           persistent_workers=workers > 0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0],
                         device=f"cuda:{self.local_rank}" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def close(self) -> None:
        if self._own_group and dist.is_initialized():
            dist.destroy_process_group()
            self._own_group = False
