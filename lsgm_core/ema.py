"""Exponential moving average of a module's weights: the prior's EMA, which sampling and the
evaluations use in place of the raw training weights."""
from __future__ import annotations

import torch


class EMA:
    """A shadow copy of `module.state_dict()`, moved towards the module's weights after every step."""

    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"the EMA decay must lie in [0, 1], got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        """Fold in the weights after optimisation step `step` (counted from 0). The decay warms up as
        (1 + step) / (10 + step), so that the first steps' weights, far from trained, fade quickly;
        buffers that are not floating point (counters, masks) are copied."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1.0 - decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take the averages of `state`, which has the module's keys and shapes (checkpoint.check_fit
        checks a file's), onto this EMA's device."""
        for k, v in state.items():
            self.shadow[k].copy_(v)

    def copy_to(self, module: torch.nn.Module) -> None:
        """Load the averages into `module` (e.g. a copy of the trained one, for evaluation)."""
        module.load_state_dict(self.shadow)
