"""kd's Adam: torch.optim.Adam's fused update (its defaults: betas 0.9/0.999, eps 1e-8, no weight
decay, no amsgrad) through the same kernel, without torch.optim's machinery.

Why: constructing any torch.optim optimizer calls `add_param_group`, which is decorated with
`torch._disable_dynamo` and so imports torch._dynamo on its first call: 1.1 s of a ~19 s one-epoch
`kd train` process (NCBI-disease, 2-core Intel Xeon, torch 2.13 CPU; `python -X importtime -c
"import torch; import torch._dynamo"`), for a compiler kd never uses. Nothing else on kd's training
path imports it (backward, clip_grad_norm_ and state_dict round trips do not). The fused kernel is
kept because it made the step ~4x faster than the default one (6% of an epoch -> under 2%).

State and `state_dict()` use torch.optim.Adam(fused=True)'s layout (per-parameter `step` as a
float32 tensor on the parameter's device, `exp_avg`, `exp_avg_sq`; groups with all of Adam's
options), so a checkpoint written by either loads into the other."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch

BETAS = (0.9, 0.999)
EPS = 1e-8
# torch.optim.Adam's group options at its defaults, fused: what its state_dict holds besides lr.
ADAM_OPTIONS: dict[str, Any] = {"betas": BETAS, "eps": EPS, "weight_decay": 0, "amsgrad": False,
                                "maximize": False, "foreach": None, "capturable": False,
                                "differentiable": False, "fused": True, "decoupled_weight_decay": False}
# Options that change the update: a group (or a loaded checkpoint) must have them at these values.
_FIXED = ("betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay", "capturable",
          "differentiable")
FUSED_DEVICES = ("cpu", "cuda")


class Optimizer(Protocol):
    """What kd's training loop uses of an optimizer: FusedAdam, or torch.optim.Adam off cpu/cuda."""

    param_groups: list[dict[str, Any]]

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> Any: ...

    def add_param_group(self, param_group: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def _check_fixed(group: dict[str, Any], where: str) -> None:
    for name in _FIXED:
        value = group.get(name, ADAM_OPTIONS[name])
        if (tuple(value) if name == "betas" else value) != ADAM_OPTIONS[name]:
            raise ValueError(f"FusedAdam only has Adam's default {name}={ADAM_OPTIONS[name]!r}; {where} has {value!r}")


class FusedAdam:
    """Adam with torch's defaults, stepped by `torch._fused_adam_` as torch.optim.Adam(fused=True)
    does. Parameters must be floating point on cpu or cuda (the devices with the fused kernel)."""

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        self.defaults: dict[str, Any] = {"lr": lr, **ADAM_OPTIONS}
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        for group in groups if isinstance(groups[0], dict) else [{"params": groups}]:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group of parameters (its own `lr` or the optimizer's), as torch.optim does."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        _check_fixed(param_group, "the group")
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        for param in params:
            if not (param.is_leaf or param.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")
            if param.device.type not in FUSED_DEVICES or not param.is_floating_point():
                raise ValueError(f"FusedAdam needs floating-point parameters on {'/'.join(FUSED_DEVICES)}, "
                                 f"not {param.dtype} on {param.device}")
            if id(param) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append({**self.defaults, **param_group, "params": params, "fused": True})

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drops every gradient, as kd's training loop asks (`set_to_none=True`, torch's default);
        zeroing them in place is not offered."""
        if not set_to_none:
            raise ValueError("FusedAdam.zero_grad only drops gradients (set_to_none=True)")
        for group in self.param_groups:
            for param in group["params"]:
                param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every parameter that has a gradient (one outside this step's graph has
        none and keeps its value and moments, as with torch.optim.Adam)."""
        for group in self.param_groups:
            # One kernel call per device and dtype, as torch groups them
            # (Optimizer._group_tensors_by_device_and_dtype).
            lists: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], ...]] = {}
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients")
                state = self.state.get(param) or self._initial_state(param)
                tensors = lists.setdefault((param.device, param.dtype), ([], [], [], [], []))
                for tensor_list, tensor in zip(tensors, (param, param.grad, state["exp_avg"],
                                                         state["exp_avg_sq"], state["step"])):
                    tensor_list.append(tensor)
            for params, grads, exp_avgs, exp_avg_sqs, steps in lists.values():
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                                   lr=group["lr"], beta1=BETAS[0], beta2=BETAS[1], weight_decay=0.0,
                                   eps=EPS, maximize=False, grad_scale=None, found_inf=None)

    def _initial_state(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        # As torch.optim.Adam keeps it when fused: the step a float32 tensor on the parameter's device.
        state = {"step": torch.zeros((), dtype=torch.float32, device=param.device),
                 "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                 "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}
        self.state[param] = state
        return state

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: parameters numbered in group order, state by number."""
        numbers: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            for param in group["params"]:
                numbers.setdefault(id(param), len(numbers))
            packed = {key: value for key, value in group.items() if key != "params"}
            groups.append({**packed, "params": [numbers[id(p)] for p in group["params"]]})
        state = {numbers[id(param)]: dict(values) for param, values in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state written by FusedAdam or by torch.optim.Adam (fused or not, at Adam's default
        options): the groups' learning rates and each parameter's state, copied onto its device."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, self.param_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                             "optimizer's group")
        for saved in saved_groups:
            _check_fixed(saved, "the loaded state dict")
        by_number = {number: param for saved, group in zip(saved_groups, self.param_groups)
                     for number, param in zip(saved["params"], group["params"])}
        state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        for number, values in state_dict["state"].items():
            param = by_number[number]
            state[param] = {key: _on_device(key, value, param) for key, value in values.items()}
        for saved, group in zip(saved_groups, self.param_groups):
            group["lr"] = saved["lr"]
        self.state = state


def _on_device(key: str, value: Any, param: torch.Tensor) -> torch.Tensor:
    # A step written by the default (non-fused) Adam is a python number or a cpu tensor.
    if key == "step":
        return torch.as_tensor(value, dtype=torch.float32).to(param.device).clone()
    return value.to(dtype=param.dtype, device=param.device).clone()
