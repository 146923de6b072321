"""All-gather that carries gradients, for in-batch negatives across processes.

`accelerator.gather` and `dist.all_gather` return tensors without autograd history, so negatives from
other processes would get no gradient (SimCSE's own code restores only the local slice). Here the
backward pass sums every process's gradient for each slice and returns this process's part. With DDP's
gradient averaging on top, the update equals one process's on the global batch, for any loss that is a
mean over local rows (InfoNCE) or identical on every process (a penalty on the gathered batch).
"""

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(process_index, num_processes), (0, 1) when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # sum: every process's loss may depend on every slice
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) per process -> (num_processes * B, ...) in process order; identity on one process.

    Every process must pass the same B (train.py's batches guarantee it).
    """
    if world()[1] == 1:
        return x
    return _GatherWithGrad.apply(x)
