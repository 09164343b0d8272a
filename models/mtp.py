"""Forward + backward of a multi-token model, either all heads at once or one head at a time.

The memory-saving order (Gloeckle et al. 2024, section 2): run the trunk once, then each head's forward
and backward in turn, so only one head's logits (B, T, V) exist at a time. Gradients with respect to the
trunk output and the heads' parameters are collected with `torch.autograd.grad` and handed to ONE final
backward pass whose roots are the trunk output and those parameters. Each parameter's gradient is
therefore accumulated exactly once per micro-batch, which is what DistributedDataParallel needs: a
backward per head would mark the shared unembedding and trunk ready several times.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from models.gpt import GPT


def all_heads_backward(model: Callable, x: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """Plain order: one forward over every head, backward of scale * sum(head losses).
    Returns the detached head losses (n_future,)."""
    _, head_losses = model(x, y)
    (head_losses.sum() * scale).backward()
    return head_losses.detach()


def sequential_heads_backward(model: Callable, core: GPT, x: torch.Tensor, y: torch.Tensor, scale: float,
                              head_loss: Callable | None = None) -> torch.Tensor:
    """Memory-saving order; same gradients as `all_heads_backward` up to floating-point rounding.

    model: the module to call for the trunk (may be DDP-wrapped or compiled; called with
    return_hidden=True so a DDP wrapper arms its gradient reduction for this pass).
    core: the unwrapped GPT, whose heads and unembedding are called directly.
    head_loss: optionally a compiled `core.head_loss`.
    """
    head_loss = head_loss or core.head_loss
    h = model(x, return_hidden=True)  # (B, T, C), graph back to the embedding
    h_free = h.detach().requires_grad_()  # heads' graphs stop here
    unembedding = core.lm_head.weight
    grad_h = torch.zeros_like(h)
    param_grads: dict[torch.nn.Parameter, torch.Tensor] = {}
    losses = []
    for k in range(core.cfg.n_future):
        params = [*core.heads[k].parameters(), unembedding]
        loss_k = head_loss(k, h_free, y)
        grads = torch.autograd.grad(loss_k * scale, [h_free, *params])
        grad_h += grads[0]
        for p, g in zip(params, grads[1:]):
            param_grads[p] = param_grads[p] + g if p in param_grads else g
        losses.append(loss_k.detach())
        del loss_k, grads  # free this head's logits before the next head runs
    roots = [h, *param_grads]
    torch.autograd.backward(roots, [grad_h, *param_grads.values()])
    return torch.stack(losses)
