"""DIGITS's policies, percent-based (digits.models.lr_policies); the Keras schedule, Caffe-style."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from digits.models.lr_policies import (
    DIGITS_FORM_DEFAULTS,
    POLICIES,
    caffe_solver_params,
    learning_rate,
    policy_from_form,
)
from train_service.lr_policy import DigitsSchedule, schedule_from_form

# Keras 3.15's variables implement __array__ without NumPy 2's copy keyword (np.array(variable)
# in saving, .numpy() and get_config), which NumPy reports as a DeprecationWarning.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

# DIGITS's form defaults, as parameters: base_lr 0.01 for all.
DEFAULTS = {
    "fixed": {},
    "step": {"stepsize": 33, "gamma": 0.1},
    "multistep": {"stepvalue": [50, 85], "gamma": 0.5},
    "exp": {"gamma": 0.95},
    "inv": {"gamma": 0.1, "power": 0.5},
    "poly": {"power": 3},
    "sigmoid": {"stepsize": 50, "gamma": 0.1},
}

# (policy, lr at 0%, 50%, 100% of training), from DIGITS's formulas with p the percentage.
EXPECTED = [
    # fixed: lr.
    ("fixed", 0.01, 0.01, 0.01),
    # step: lr * 0.1 ^ floor(p / 33): floor(0) = 0, floor(50/33) = 1, floor(100/33) = 3.
    ("step", 0.01, 0.001, 0.00001),
    # multistep: lr * 0.5 ^ (values <= p among 50, 85): none, one (50 <= 50), two.
    ("multistep", 0.01, 0.005, 0.0025),
    # exp: lr * 0.95 ^ p: 0.95^0 = 1, 0.95^50 = 0.0769449752767..., 0.95^100 = 0.0059205292203...
    ("exp", 0.01, 0.0007694497527671316, 5.9205292203339975e-05),
    # inv: lr * (1 + 0.1 p) ^ -0.5: 1, 1/sqrt(6) = 0.40824829..., 1/sqrt(11) = 0.30151134...
    ("inv", 0.01, 0.004082482904638631, 0.0030151134457776364),
    # poly: lr * (1 - p/100) ^ 3: 1, 0.5^3 = 0.125, 0.
    ("poly", 0.01, 0.00125, 0.0),
    # sigmoid: lr / (1 + exp(0.1 (p - 50))): 1/(1 + e^-5) = 0.99330714..., 1/2, 1/(1 + e^5).
    ("sigmoid", 0.009933071490757152, 0.005, 6.692850924284855e-05),
]


@pytest.mark.parametrize(("policy", "at0", "at50", "at100"), EXPECTED)
def test_policy_values_match_digits_formulas(policy, at0, at50, at100):
    params = DEFAULTS[policy]
    got = [learning_rate(policy, 0.01, p, **params) for p in (0.0, 0.5, 1.0)]
    assert got == pytest.approx([at0, at50, at100], rel=1e-12, abs=1e-15)


def test_step_boundaries_survive_float_rounding():
    # 0.29 * 100 == 28.999999999999996, yet 29% of training is one 29% step.
    assert learning_rate("step", 1.0, 0.29, stepsize=29, gamma=0.5) == 0.5
    assert learning_rate("multistep", 1.0, 0.29, stepvalue="29,80", gamma=0.5) == 0.5


@pytest.mark.parametrize("policy", list(POLICIES))
def test_keras_schedule_agrees_with_pure_function(policy):
    # 300 steps: every percentage used above lands on a whole iteration (33% = 99, 85% = 255).
    schedule = DigitsSchedule(policy, 0.01, 300, **DEFAULTS[policy])
    for step in (0, 1, 50, 98, 99, 100, 150, 198, 254, 255, 299, 300):
        got = float(keras.ops.convert_to_numpy(schedule(step)))
        want = learning_rate(policy, 0.01, step / 300, **DEFAULTS[policy])
        assert got == pytest.approx(want, rel=1e-4, abs=1e-9), step


def test_schedule_uses_caffes_whole_iteration_steps():
    # DIGITS: stepsize = ceil(33 * 50 / 100) = ceil(16.5) = 17 iterations.
    schedule = DigitsSchedule("step", 1.0, 50, stepsize=33, gamma=0.1)
    values = [float(keras.ops.convert_to_numpy(schedule(s))) for s in (16, 17, 33, 34)]
    assert values == pytest.approx([1.0, 0.1, 0.1, 0.01])
    # Past the end it stays at the last value (poly would otherwise go negative).
    poly = DigitsSchedule("poly", 1.0, 10, power=2)
    assert float(keras.ops.convert_to_numpy(poly(15))) == 0.0


def test_caffe_solver_params_as_digits_wrote_them():
    # max_iter 1000: scale = 10 iterations per percent.
    assert caffe_solver_params("step", 1000, stepsize=33, gamma=0.1) == {
        "lr_policy": "step",
        "max_iter": 1000,
        "stepsize": 330,
        "gamma": 0.1,
    }
    assert caffe_solver_params("multistep", 1000, stepvalue="50,85", gamma=0.5)["stepvalue"] == [
        500,
        850,
    ]
    # exp: gamma^(1/scale) = 0.95^0.1; inv: gamma/scale; sigmoid: -gamma/scale, ceil(step*scale).
    assert caffe_solver_params("exp", 1000, gamma=0.95)["gamma"] == pytest.approx(0.9948838031)
    assert caffe_solver_params("inv", 1000, gamma=0.1, power=0.5)["gamma"] == pytest.approx(0.01)
    sigmoid = caffe_solver_params("sigmoid", 1000, stepsize=50, gamma=0.1)
    assert sigmoid["gamma"] == pytest.approx(-0.01)
    assert sigmoid["stepsize"] == 500


def test_schedule_config_round_trip():
    schedule = DigitsSchedule("multistep", 0.1, 200, stepvalue="25,75", gamma=0.5)
    config = schedule.get_config()
    assert config == {
        "policy": "multistep",
        "base_lr": 0.1,
        "total_steps": 200,
        "stepvalue": [25.0, 75.0],
        "gamma": 0.5,
    }
    again = DigitsSchedule.from_config(config)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, DigitsSchedule)
    for other in (again, restored):
        assert other.get_config() == config
        assert float(keras.ops.convert_to_numpy(other(100))) == pytest.approx(0.05)


def test_saved_model_reloads_with_its_schedule(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    schedule = DigitsSchedule("step", 0.01, 90, stepsize=33, gamma=0.1)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    saved = loaded.optimizer.get_config()["learning_rate"]
    assert saved["registered_name"] == "digits>DigitsSchedule"
    assert saved["config"] == schedule.get_config()


def test_form_defaults_are_digits():
    assert DIGITS_FORM_DEFAULTS == {
        "learning_rate": 0.01,
        "lr_policy": "step",
        "lr_step_size": 33,
        "lr_step_gamma": 0.1,
        "lr_multistep_values": "50,85",
        "lr_multistep_gamma": 0.5,
        "lr_exp_gamma": 0.95,
        "lr_inv_gamma": 0.1,
        "lr_inv_power": 0.5,
        "lr_poly_power": 3,
        "lr_sigmoid_step": 50,
        "lr_sigmoid_gamma": 0.1,
    }


def test_schedule_from_form_reads_digits_fields():
    assert policy_from_form({}) == ("step", 0.01, {"stepsize": 33.0, "gamma": 0.1})
    form = {"learning_rate": "0.1", "lr_policy": "Sigmoid", "lr_sigmoid_step": "40", "x": "y"}
    schedule = schedule_from_form(form, 100)
    assert schedule.get_config() == {
        "policy": "sigmoid",
        "base_lr": 0.1,
        "total_steps": 100,
        "stepsize": 40.0,
        "gamma": 0.1,
    }
    assert float(keras.ops.convert_to_numpy(schedule(40))) == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"lr_policy": "cosine"}, "'cosine'"),
        ({"lr_policy": "exp", "lr_exp_gamma": "fast"}, "lr_exp_gamma 'fast'"),
        ({"lr_policy": "multistep", "lr_multistep_values": "85,50"}, "lr_multistep_values '85,50'"),
        ({"learning_rate": "0.1,0.01"}, "learning_rate '0.1,0.01'"),
    ],
)
def test_bad_form_fields_are_named(form, message):
    with pytest.raises(ValueError, match=message):
        schedule_from_form(form, 100)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: learning_rate("cosine", 0.1, 0.5), r"'cosine'.*fixed, step, multistep"),
        (lambda: learning_rate("step", 0.1, 0.5, gamma=0.1), "needs stepsize"),
        (lambda: learning_rate("exp", 0.1, 0.5, gamma=0.9, power=2), "unexpected: power"),
        (lambda: learning_rate("step", 0.1, 0.5, stepsize=0, gamma=0.1), "stepsize 0"),
        (lambda: learning_rate("exp", 0.1, 0.5, gamma=-1), "gamma -1"),
        (lambda: learning_rate("fixed", 0.1, 1.5), "progress 1.5"),
        (lambda: learning_rate("fixed", -0.1, 0.5), "learning_rate -0.1"),
        (lambda: DigitsSchedule("fixed", 0.1, 0), "total_steps 0"),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_schedule_values_are_float32():
    value = DigitsSchedule("inv", 0.01, 100, gamma=0.1, power=0.5)(np.int64(10))
    assert keras.ops.convert_to_numpy(value).dtype == np.float32
