"""DIGITS's learning-rate policies as a Keras schedule (``DigitsSchedule``), iteration-exact.

The policies, their form fields and formulas are the core's (``digits.models.lr_policies``, whose
docstring has the table); this is its Caffe column with ``max_iter`` the total number of batches:
Keras gives schedules the optimizer's raw iteration count, which counts every batch, accumulated
ones included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from digits.models.lr_policies import (
    caffe_solver_params,
    policy_from_form,
    positive_count,
)
from digits.models.lr_policies import validate as _validate

__all__ = ["DigitsSchedule", "schedule_from_form"]


@keras.saving.register_keras_serializable(package="digits")
class DigitsSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A DIGITS policy over ``total_steps`` batches, as Caffe ran it (see the module docstring)."""

    def __init__(self, policy: str, base_lr: float, total_steps: int, **params: Any) -> None:
        super().__init__()
        self.policy, self.base_lr, self.params = _validate(policy, base_lr, params)
        self.total_steps = positive_count("total_steps", total_steps)
        self.caffe = caffe_solver_params(self.policy, self.total_steps, **self.params)

    def __call__(self, step: Any) -> Any:
        """The learning rate at optimizer iteration ``step`` (0-based), as a float32 tensor."""
        c = self.caffe
        # Clamped, as training never runs past max_iter; poly would go negative there.
        it = ops.clip(ops.cast(step, "float32"), 0.0, float(self.total_steps))
        if self.policy == "step":
            factor = ops.power(c["gamma"], ops.floor(it / float(c["stepsize"])))
        elif self.policy == "multistep":
            passed = sum(ops.cast(it >= float(v), "float32") for v in c["stepvalue"])
            factor = ops.power(c["gamma"], passed)
        elif self.policy == "exp":
            # gamma^it as exp(it * log gamma): gamma is within 1e-7 of 1 on long runs.
            factor = ops.exp(it * (math.log(self.params["gamma"]) / (self.total_steps / 100.0)))
        elif self.policy == "inv":
            factor = ops.power(1.0 + c["gamma"] * it, -c["power"])
        elif self.policy == "poly":
            factor = ops.power(1.0 - it / float(self.total_steps), c["power"])
        elif self.policy == "sigmoid":
            factor = 1.0 / (1.0 + ops.exp(-c["gamma"] * (it - float(c["stepsize"]))))
        else:
            factor = ops.ones_like(it)
        return ops.cast(self.base_lr * factor, "float32")

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-serializable."""
        return {
            "policy": self.policy,
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            **self.params,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DigitsSchedule:
        """The schedule ``get_config`` describes."""
        return cls(**config)


def schedule_from_form(form: Mapping[str, Any], total_steps: int) -> DigitsSchedule:
    """The schedule DIGITS's form fields describe, over ``total_steps`` batches."""
    policy, base_lr, params = policy_from_form(form)
    return DigitsSchedule(policy, base_lr, total_steps, **params)
