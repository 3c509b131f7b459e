"""Adam in torch's fused kernel, without ``torch.optim``.

``torch.optim.Adam`` runs the same kernel with ``fused=True``, but constructing it imports
``torch._dynamo`` (seconds before the first step of a new process; ``benchmarks/README.md``,
"Measurements quoted from the code"), and its per-step Python bookkeeping costs more than
the kernel on the small networks here.
"""

from __future__ import annotations

import torch

__all__ = ["adam_step"]


def adam_step(
    params,
    grads,
    exp_avg,
    exp_avg_sq,
    steps,
    *,
    learning_rate: float,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> None:
    """One Adam update of every tensor in ``params``, in place, in one fused kernel.

    ``exp_avg`` and ``exp_avg_sq`` are the moments (one tensor per parameter) and
    ``steps`` the update counts as tensors, advanced here: nothing needs the host.
    """
    if len(steps) == 1:
        steps[0].add_(1.0)  # one tensor: the plain op dispatches faster than the foreach
    else:
        torch._foreach_add_(steps, 1.0)
    torch._fused_adam_(
        params,
        grads,
        exp_avg,
        exp_avg_sq,
        [],
        steps,
        lr=learning_rate,
        beta1=betas[0],
        beta2=betas[1],
        weight_decay=weight_decay,
        eps=eps,
        amsgrad=False,
        maximize=maximize,
    )
