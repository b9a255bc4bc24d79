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

``learning_rate`` is the middle column (DIGITS's preview graph, drawn by the gateway);
``caffe_solver_params`` the Caffe column. ``train_service.lr_policy.DigitsSchedule`` runs the Caffe
column as a Keras schedule. No TensorFlow here: the gateway and the train service both use this.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DIGITS_FORM_DEFAULTS",
    "FORM_FIELDS",
    "POLICIES",
    "caffe_solver_params",
    "learning_rate",
    "policy_from_form",
    "positive_count",
    "validate",
]

# Each policy's parameters (the keys of DIGITS's lr_policy dict); all are required.
POLICIES: dict[str, tuple[str, ...]] = {
    "fixed": (),
    "step": ("stepsize", "gamma"),
    "multistep": ("stepvalue", "gamma"),
    "exp": ("gamma",),
    "inv": ("gamma", "power"),
    "poly": ("power",),
    "sigmoid": ("stepsize", "gamma"),
}

# DIGITS's ModelForm defaults (digits/model/forms.py).
DIGITS_FORM_DEFAULTS: dict[str, Any] = {
    "learning_rate": 0.01,
    "lr_policy": "step",
    "lr_step_size": 33.0,
    "lr_step_gamma": 0.1,
    "lr_multistep_values": "50,85",
    "lr_multistep_gamma": 0.5,
    "lr_exp_gamma": 0.95,
    "lr_inv_gamma": 0.1,
    "lr_inv_power": 0.5,
    "lr_poly_power": 3.0,
    "lr_sigmoid_step": 50.0,
    "lr_sigmoid_gamma": 0.1,
}

# Which form field feeds which parameter, per policy (as DIGITS's model views built lr_policy).
FORM_FIELDS: dict[str, dict[str, str]] = {
    "fixed": {},
    "step": {"stepsize": "lr_step_size", "gamma": "lr_step_gamma"},
    "multistep": {"stepvalue": "lr_multistep_values", "gamma": "lr_multistep_gamma"},
    "exp": {"gamma": "lr_exp_gamma"},
    "inv": {"gamma": "lr_inv_gamma", "power": "lr_inv_power"},
    "poly": {"power": "lr_poly_power"},
    "sigmoid": {"stepsize": "lr_sigmoid_step", "gamma": "lr_sigmoid_gamma"},
}

# Percent positions computed in floating point (0.29 * 100 == 28.999999999999996) still count.
_EPS = 1e-9


def _number(name: str, value: Any) -> float:
    """A finite float, or a ValueError naming the parameter and its value."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number) or isinstance(value, bool):
        raise ValueError(f"{name} {value!r} is not a finite number")
    return number


def positive_count(name: str, value: Any) -> int:
    """A positive int (numpy's included), or a ValueError naming it."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} {value!r} is not an integer >= 1")
    return int(value)


def _step_values(value: Any) -> list[float]:
    """Multistep positions from a list or DIGITS's comma-separated string, ascending."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        values = [_number("stepvalue", item) for item in items]
    except TypeError:
        raise ValueError(f"stepvalue {value!r} is not a list of percentages") from None
    if not values:
        raise ValueError(f"stepvalue {value!r} has no values")
    if any(v < 0 for v in values) or values != sorted(values):
        raise ValueError(f"stepvalue {value!r} must be ascending percentages >= 0")
    return values


def validate(policy: str, base_lr: Any, params: Mapping[str, Any]) -> tuple[str, float, dict]:
    """The policy name, base rate and parameters checked and normalized, or a ValueError."""
    name = str(policy).strip().lower()
    if name not in POLICIES:
        raise ValueError(f"unknown lr_policy {policy!r}; known policies: {', '.join(POLICIES)}")
    lr = _number("learning_rate", base_lr)
    if lr < 0:
        raise ValueError(f"learning_rate {base_lr!r} must be >= 0")
    wanted = POLICIES[name]
    unknown = sorted(set(params) - set(wanted))
    if unknown:
        accepted = ", ".join(wanted) or "none"
        raise ValueError(f"lr_policy {name!r} takes {accepted}; unexpected: {', '.join(unknown)}")
    missing = [key for key in wanted if params.get(key) is None]
    if missing:
        raise ValueError(f"lr_policy {name!r} needs {', '.join(missing)}")
    out: dict[str, Any] = {}
    for key in wanted:
        value = params[key]
        out[key] = _step_values(value) if key == "stepvalue" else _number(key, value)
    if name == "step" and out["stepsize"] <= 0:
        raise ValueError(f"stepsize {params['stepsize']!r} must be > 0 (percent of training)")
    if name == "exp" and out["gamma"] <= 0:
        raise ValueError(f"gamma {params['gamma']!r} must be > 0 for lr_policy 'exp'")
    if name == "inv" and 1 + 100 * out["gamma"] <= 0:
        raise ValueError(f"gamma {params['gamma']!r} must be > -0.01 for lr_policy 'inv'")
    if name == "poly" and out["power"] < 0:
        raise ValueError(f"power {params['power']!r} must be >= 0 for lr_policy 'poly'")
    return name, lr, out


def learning_rate(policy: str, base_lr: float, progress: float, **params: Any) -> float:
    """DIGITS's learning rate after ``progress`` (0 to 1) of training, as its preview graph."""
    name, lr, p = validate(policy, base_lr, params)
    fraction = _number("progress", progress)
    if not 0 <= fraction <= 1:
        raise ValueError(f"progress {progress!r} is not between 0 and 1")
    pct = 100.0 * fraction
    if name == "step":
        return lr * p["gamma"] ** math.floor(pct / p["stepsize"] + _EPS)
    if name == "multistep":
        return lr * p["gamma"] ** sum(pct + _EPS >= v for v in p["stepvalue"])
    if name == "exp":
        return lr * p["gamma"] ** pct
    if name == "inv":
        return lr * (1.0 + p["gamma"] * pct) ** -p["power"]
    if name == "poly":
        return lr * (1.0 - fraction) ** p["power"]
    if name == "sigmoid":
        return lr / (1.0 + math.exp(p["gamma"] * (pct - p["stepsize"])))
    return lr


def caffe_solver_params(policy: str, max_iter: int, **params: Any) -> dict[str, Any]:
    """The Caffe solver fields DIGITS wrote for a policy over ``max_iter`` iterations."""
    name, _, p = validate(policy, 0.0, params)
    max_iter = positive_count("max_iter", max_iter)
    scale = max_iter / 100.0
    out: dict[str, Any] = {"lr_policy": name, "max_iter": max_iter}
    if name == "step":
        out.update(stepsize=math.ceil(p["stepsize"] * scale), gamma=p["gamma"])
    elif name == "multistep":
        out.update(stepvalue=[math.ceil(v * scale) for v in p["stepvalue"]], gamma=p["gamma"])
    elif name == "exp":
        out.update(gamma=p["gamma"] ** (1.0 / scale))
    elif name == "inv":
        out.update(gamma=p["gamma"] / scale, power=p["power"])
    elif name == "poly":
        out.update(power=p["power"])
    elif name == "sigmoid":
        out.update(gamma=-p["gamma"] / scale, stepsize=math.ceil(p["stepsize"] * scale))
    return out


def policy_from_form(form: Mapping[str, Any]) -> tuple[str, float, dict[str, Any]]:
    """(policy, base learning rate, parameters) from DIGITS's form fields, defaults filled in."""

    def field(key: str) -> Any:
        value = form.get(key)
        return DIGITS_FORM_DEFAULTS[key] if value is None or value == "" else value

    policy = str(field("lr_policy")).strip().lower()
    if policy not in POLICIES:
        raise ValueError(f"lr_policy {policy!r} is not one of {', '.join(POLICIES)}")
    params = {}
    for param, key in FORM_FIELDS[policy].items():
        value = field(key)
        if param != "stepvalue":
            params[param] = _number(key, value)
            continue
        try:
            params[param] = _step_values(value)
        except ValueError:
            raise ValueError(f"{key} {value!r} is not ascending percentages >= 0") from None
    base_lr = _number("learning_rate", field("learning_rate"))
    return policy, base_lr, params
