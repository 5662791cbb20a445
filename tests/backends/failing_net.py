"""A network that breaks only inside a distributed worker, to test how failures surface.

It builds and runs normally on the driver (instantiation, model summary, test pass), and raises
in its first training forward pass once a torch.distributed process group exists, which is
only ever the case on a worker of the ``orca`` or ``spark_ddp`` backend.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from mnist_mlops.models.convnet import ConvNet

FAILURE_MESSAGE = "injected failure inside a distributed worker"


class FailingNet(ConvNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and dist.is_available() and dist.is_initialized():
            raise RuntimeError(f"{FAILURE_MESSAGE} (rank {dist.get_rank()})")
        return super().forward(x)
