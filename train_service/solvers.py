"""DIGITS's solver types (the form's ``solver_type``) as Keras 3 optimizers.

The mapping follows the Caffe solvers DIGITS drove: SGD and NESTEROV use ``momentum`` (DIGITS set
0.9); ADAGRAD and RMSPROP take none (Caffe refuses it); RMSPROP decays with ``rms_decay`` (the
form's field, default 0.99); ADADELTA and ADAM read Caffe's ``momentum`` as their decay (rho,
beta_1), with ADAM's beta_2 at Caffe's ``momentum2`` default of 0.999; epsilon is Caffe's ``delta``,
1e-8; ADAGRAD keeps Keras's initial accumulator of 0.1 (Caffe's starts at 0, and its first step
is then a full ``lr`` in every coordinate). ``weight_decay`` is Keras's decoupled decay
(``w -= lr * wd * w``), not Caffe's L2 term in the gradient.

Batch accumulation (the form's ``batch_accumulation``, Caffe's ``iter_size``) maps to Keras's
``gradient_accumulation_steps``: the variables change once every that many batches, with the mean
gradient. The optimizer's ``iterations`` then counts updates, while learning-rate schedules see
every batch: size schedules in batches (``DigitsSchedule``'s ``total_steps``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import keras

__all__ = ["SOLVER_TYPES", "make_optimizer"]

SOLVER_TYPES = ("SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM")

_EPSILON = 1e-8  # Caffe's default delta


def _fraction(name: str, value: Any) -> float:
    """A float in [0, 1), or a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} {value!r} is not a number")
    if not 0 <= value < 1:
        raise ValueError(f"{name} {value!r} must be >= 0 and < 1")
    return float(value)


def make_optimizer(
    solver: str,
    schedule: float | keras.optimizers.schedules.LearningRateSchedule,
    *,
    momentum: float = 0.9,
    weight_decay: float | None = None,
    accumulation_steps: int = 1,
    rms_decay: float = 0.99,
) -> keras.optimizers.Optimizer:
    """A Keras optimizer for DIGITS's ``solver_type`` (case-insensitive) and learning rate."""
    name = str(solver).strip().upper()
    if name not in SOLVER_TYPES:
        raise ValueError(f"unknown solver_type {solver!r}; known types: {', '.join(SOLVER_TYPES)}")
    momentum = _fraction("momentum", momentum)
    rms_decay = _fraction("rms_decay", rms_decay)
    if weight_decay is not None:
        ok = isinstance(weight_decay, numbers.Real) and not isinstance(weight_decay, bool)
        if not ok or not math.isfinite(weight_decay) or weight_decay < 0:
            raise ValueError(f"weight_decay {weight_decay!r} must be a number >= 0 or None")
        weight_decay = float(weight_decay) or None
    ok = isinstance(accumulation_steps, numbers.Integral) and not isinstance(
        accumulation_steps, bool
    )
    if not ok or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps {accumulation_steps!r} is not an integer >= 1")
    common: dict[str, Any] = {
        "learning_rate": schedule,
        "weight_decay": weight_decay,
        "gradient_accumulation_steps": int(accumulation_steps) if accumulation_steps > 1 else None,
    }
    opt = keras.optimizers
    if name in ("SGD", "NESTEROV"):
        return opt.SGD(momentum=momentum, nesterov=name == "NESTEROV", **common)
    if name == "ADAGRAD":
        return opt.Adagrad(epsilon=_EPSILON, **common)
    if name == "RMSPROP":
        return opt.RMSprop(rho=rms_decay, epsilon=_EPSILON, **common)
    if name == "ADADELTA":
        return opt.Adadelta(rho=momentum, epsilon=_EPSILON, **common)
    return opt.Adam(beta_1=momentum, beta_2=0.999, epsilon=_EPSILON, **common)
