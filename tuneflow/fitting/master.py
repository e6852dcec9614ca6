"""bf16 Linear weights with an fp32 master copy: the same bf16-mixed training with less casting.

Under bf16 autocast every Linear weight is stored in fp32 and cast to bf16 at every forward; the backward
yields a bf16 gradient that is cast back to fp32 for the optimizer. Keeping the Linear weights in bf16 (the
values autocast would have made) and handing the optimizer fp32 *master* copies instead does the same
arithmetic: forward on the bf16-rounded master, the bf16 gradient widened to fp32, AdamW and clipping on
fp32, the result rounded into the bf16 weight for the next step. What goes away is the per-step cast of
~11M weights and their gradients, and half the gradient memory. Embeddings and LayerNorm stay fp32 (autocast
keeps them fp32 too).

One device only (DDP buckets gradients by the dtype they were built with) and no gradient accumulation
(bf16 gradients would accumulate in bf16, where plain mixed precision accumulates in fp32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch


class MasterWeights:
    """The bf16 Linear weights of a module and their fp32 masters, in the same order.

    Build it from a module in fp32; it converts the trainable Linear weights and biases in place. The
    optimizer is given :meth:`optimizer_params`: the masters where a weight was converted, the parameter
    itself elsewhere.
    """

    def __init__(self, module: torch.nn.Module):
        self.low: list[torch.nn.Parameter] = []
        self.masters: list[torch.nn.Parameter] = []
        self._master_of: dict[int, torch.nn.Parameter] = {}
        for linear in (m for m in module.modules() if isinstance(m, torch.nn.Linear)):
            for p in linear.parameters(recurse=False):
                if p.requires_grad and p.dtype == torch.float32:
                    master = torch.nn.Parameter(p.detach().clone())
                    p.data = p.data.to(torch.bfloat16)
                    self.low.append(p)
                    self.masters.append(master)
                    self._master_of[id(p)] = master

    def __bool__(self) -> bool:
        return bool(self.low)

    def optimizer_params(self, params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        """``params`` with each converted weight replaced by its fp32 master."""
        return [self._master_of.get(id(p), p) for p in params]

    def master(self, p: torch.nn.Parameter) -> torch.nn.Parameter:
        """The fp32 master of a converted weight (the weight itself otherwise)."""
        return self._master_of.get(id(p), p)

    @torch.no_grad()
    def grads_to_masters(self) -> None:
        """Widen the bf16 gradients into the masters (after backward, before clipping and the step)."""
        for p, m in zip(self.low, self.masters, strict=True):
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    @torch.no_grad()
    def masters_to_weights(self) -> None:
        """Round the updated masters into the bf16 weights (after the optimizer step)."""
        if self.low:
            torch._foreach_copy_(self.low, self.masters)

    @contextlib.contextmanager
    def fp32(self) -> Iterator[None]:
        """The fp32 masters as the module's weights within the block (sharing their storage): for scoring
        the model mid-training outside autocast, at full precision. The bf16 copies come back after."""
        kept = [p.data for p in self.low]
        for p, m in zip(self.low, self.masters, strict=True):
            p.data = m.data
        try:
            yield
        finally:
            for p, data in zip(self.low, kept, strict=True):
                p.data = data

    @torch.no_grad()
    def restore_fp32(self) -> None:
        """Give the module its fp32 weights back, the masters' values (after training)."""
        for p, m in zip(self.low, self.masters, strict=True):
            p.data = m.detach().clone()
        self.low, self.masters, self._master_of = [], [], {}
