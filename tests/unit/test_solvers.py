"""train_service.solvers: DIGITS's solver types as Keras optimizers, with batch accumulation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from train_service.lr_policy import DigitsSchedule
from train_service.solvers import SOLVER_TYPES, make_optimizer

# Keras 3.15's variables implement __array__ without NumPy 2's copy keyword (np.array(variable)
# in saving, .numpy() and get_config), which NumPy reports as a DeprecationWarning.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

KERAS_CLASSES = {
    "SGD": keras.optimizers.SGD,
    "NESTEROV": keras.optimizers.SGD,
    "ADAGRAD": keras.optimizers.Adagrad,
    "RMSPROP": keras.optimizers.RMSprop,
    "ADADELTA": keras.optimizers.Adadelta,
    "ADAM": keras.optimizers.Adam,
}


def _schedule() -> DigitsSchedule:
    return DigitsSchedule("step", 0.1, 10, stepsize=50, gamma=0.1)


@pytest.mark.parametrize("solver", SOLVER_TYPES)
def test_each_solver_constructs(solver):
    optimizer = make_optimizer(solver.lower(), _schedule())
    assert type(optimizer) is KERAS_CLASSES[solver]
    assert optimizer.gradient_accumulation_steps is None


def test_solver_settings_follow_digits():
    assert make_optimizer("SGD", 0.1).get_config()["nesterov"] is False
    nesterov = make_optimizer("Nesterov", 0.1, momentum=0.8).get_config()
    assert (nesterov["nesterov"], nesterov["momentum"]) == (True, pytest.approx(0.8))
    assert make_optimizer("RMSPROP", 0.1, rms_decay=0.9).get_config()["rho"] == pytest.approx(0.9)
    assert make_optimizer("ADAM", 0.1).get_config()["beta_1"] == pytest.approx(0.9)
    assert make_optimizer("SGD", 0.1, weight_decay=5e-4).weight_decay == pytest.approx(5e-4)


def test_accumulation_sets_gradient_accumulation_steps():
    assert make_optimizer("SGD", 0.1, accumulation_steps=4).gradient_accumulation_steps == 4
    assert make_optimizer("ADAM", 0.1, accumulation_steps=1).gradient_accumulation_steps is None


def test_unknown_solver_lists_known_ones():
    with pytest.raises(
        ValueError, match=r"'LBFGS'.*SGD, NESTEROV, ADAGRAD, RMSPROP, ADADELTA, ADAM"
    ):
        make_optimizer("LBFGS", 0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"momentum": 1.5}, "momentum 1.5"),
        ({"weight_decay": -1}, "weight_decay -1"),
        ({"accumulation_steps": 0}, "accumulation_steps 0"),
        ({"accumulation_steps": 2.5}, "accumulation_steps 2.5"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer("SGD", 0.1, **kwargs)


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.build((None, 4))
    return model


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 4)).astype("float32"), rng.integers(0, 3, size=8)


@pytest.mark.parametrize("solver", SOLVER_TYPES)
def test_tiny_model_trains_one_step(solver):
    model = _tiny_model()
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=make_optimizer(solver, _schedule()), loss=loss)
    model.train_on_batch(*_data())
    after = [w.numpy() for w in model.trainable_weights]
    assert int(model.optimizer.iterations.numpy()) == 1
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_accumulated_batches_update_once():
    model = _tiny_model()
    kernel = model.trainable_weights[0]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=make_optimizer("SGD", 0.1, accumulation_steps=2), loss=loss)
    start = kernel.numpy().copy()
    model.train_on_batch(*_data())
    np.testing.assert_array_equal(kernel.numpy(), start)
    model.train_on_batch(*_data())
    assert not np.allclose(kernel.numpy(), start)
