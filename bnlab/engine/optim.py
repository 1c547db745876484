"""Adam, AdamW and SGD (plain, momentum, Nesterov) as thin calls into torch's own kernels.

torch.optim imports torch._dynamo the first time any optimizer is built (add_param_group is
wrapped by torch._disable_dynamo): 2.5 s per process measured on a 2-core machine here, and 5.6 s
with the other core busy, more than a one-epoch sweep worker spends on a whole stack's
bookkeeping. These classes make the calls torch.optim.Adam(fused=True), AdamW(fused=True) and
SGD(foreach=True) make, with the same arguments and the same state, so each update is bitwise
torch.optim's (tests/engine/test_optim.py checks it) without that import. Only what bnlab configures is
here: no amsgrad, maximize, dampening, closures or state_dict.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import torch

ADAM_BETAS = (0.9, 0.999)  # torch.optim's defaults, which bnlab does not expose
ADAM_EPS = 1e-8


class _Optimizer:
    """What the engines use of torch.optim.Optimizer: param_groups, per-parameter state, step()."""

    def __init__(self, params: Iterable[Any], **defaults: Any) -> None:
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = [{**defaults, **group, "params": list(group["params"])} for group in groups]
        # As torch.optim's: a parameter never updated (SGD without momentum keeps nothing) still
        # has an entry, which the stacked engine reads when a member leaves the stack.
        self.state: defaultdict[torch.Tensor, dict[str, torch.Tensor]] = defaultdict(dict)

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                param.grad = None

    def _groups_with_grads(self) -> Iterator[tuple[dict[str, Any], list[torch.Tensor]]]:
        """Each param group with its parameters that have a gradient, as torch.optim skips the rest."""
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if params:
                yield group, params


class FusedAdam(_Optimizer):
    """torch.optim.Adam(fused=True), or AdamW(fused=True) with `decoupled`."""

    def __init__(self, params: Iterable[Any], lr: float, weight_decay: float = 0.0, decoupled: bool = False) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        self.kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_

    @torch.no_grad()
    def step(self) -> None:
        for group, params in self._groups_with_grads():
            states = [self._state(param) for param in params]
            steps = [state["step"] for state in states]
            torch._foreach_add_(steps, 1)
            self.kernel(params, [param.grad for param in params], [state["exp_avg"] for state in states],
                        [state["exp_avg_sq"] for state in states], [], steps, amsgrad=False, lr=group["lr"],
                        beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], weight_decay=group["weight_decay"], eps=ADAM_EPS,
                        maximize=False, grad_scale=None, found_inf=None)

    def _state(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[param]
        if not state:
            # As torch.optim's fused Adam: a float32 step counter on the parameter's device.
            state.update({
                "step": torch.zeros((), dtype=torch.float32, device=param.device),
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
            })
        return state


class ForeachSGD(_Optimizer):
    """torch.optim.SGD(foreach=True) without dampening: plain, heavy-ball momentum, or Nesterov."""

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)

    @torch.no_grad()
    def step(self) -> None:
        for group, params in self._groups_with_grads():
            grads = [param.grad for param in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            momentum = group["momentum"]
            if momentum != 0:
                buffers = [self.state[param].get("momentum_buffer") for param in params]
                if all(buffer is not None for buffer in buffers):
                    torch._foreach_mul_(buffers, momentum)
                    torch._foreach_add_(buffers, grads, alpha=1)
                else:
                    for index, (buffer, grad) in enumerate(zip(buffers, grads, strict=True)):
                        buffers[index] = grad.detach().clone() if buffer is None else buffer.mul_(momentum).add_(grad)
                for param, buffer in zip(params, buffers, strict=True):
                    self.state[param]["momentum_buffer"] = buffer
                if group["nesterov"]:
                    torch._foreach_add_(grads, buffers, alpha=momentum)
                else:
                    grads = buffers
            torch._foreach_add_(params, grads, alpha=-group["lr"])
