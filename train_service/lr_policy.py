"""DIGITS's learning-rate policies, with DIGITS's meaning: Caffe's formulas, steps in percent.

DIGITS's form gives step positions in percent of training; its Caffe task rescaled them to
iterations with ``scale = max_iter / 100`` (digits/model/tasks/caffe_train.py). With ``p`` the
percentage of training done (``100 * progress``) and ``it = p * scale`` Caffe's iteration:

========== ============================== ==================================== ====================
policy     DIGITS form fields             DIGITS's value at p percent          Caffe solver fields
========== ============================== ==================================== ====================
fixed      (none)                         lr                                   (none)
step       lr_step_size s, lr_step_gamma  lr * gamma ^ floor(p / s)            stepsize =
           gamma                                                               ceil(s * scale)
multistep  lr_multistep_values v1,v2,..,  lr * gamma ^ (number of vi <= p)     stepvalue =
           lr_multistep_gamma gamma                                            ceil(vi * scale)
exp        lr_exp_gamma gamma             lr * gamma ^ p                       gamma ^ (1 / scale)
inv        lr_inv_gamma gamma,            lr * (1 + gamma * p) ^ -power        gamma / scale
           lr_inv_power power
poly       lr_poly_power power            lr * (1 - p / 100) ^ power           power (max_iter)
sigmoid    lr_sigmoid_step s,             lr / (1 + exp(gamma * (p - s)))      gamma = -gamma/scale,
           lr_sigmoid_gamma gamma                                              stepsize =
                                                                               ceil(s * scale)
========== ============================== ==================================== ====================

Caffe then computes, at iteration ``it``: step ``lr * gamma^floor(it/stepsize)``; multistep
``lr * gamma^(stepvalues passed)``; exp ``lr * gamma^it``; inv ``lr * (1 + gamma*it)^-power``;
poly ``lr * (1 - it/max_iter)^power``; sigmoid ``lr / (1 + exp(-gamma * (it - stepsize)))``: the
middle column again, up to the rounding of step positions to whole iterations.

``learning_rate`` is the middle column (DIGITS's preview graph). ``DigitsSchedule`` is the Caffe
column, iteration-exact, with ``max_iter`` the total number of batches: Keras gives schedules the
optimizer's raw iteration count, which counts every batch, accumulated ones included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from train_service.lr_formula import (
    DIGITS_FORM_DEFAULTS,
    POLICIES,
    caffe_solver_params,
    learning_rate,
    policy_from_form,
    positive_count,
)
from train_service.lr_formula import validate as _validate

__all__ = [
    "DIGITS_FORM_DEFAULTS",
    "POLICIES",
    "DigitsSchedule",
    "caffe_solver_params",
    "learning_rate",
    "policy_from_form",
    "schedule_from_form",
]


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
