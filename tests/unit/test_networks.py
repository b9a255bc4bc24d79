"""train_service.networks: standard networks give logits; custom networks load safely."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from train_service import networks

CLASSIFIERS = [
    ("lenet", (28, 28, 1)),
    ("alexnet", (32, 32, 3)),
    ("googlenet", (32, 32, 3)),
    ("resnet18", (32, 32, 3)),
    ("resnet50", (32, 32, 3)),
]


def _batch(shape: tuple[int, ...], n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, *shape)).astype("float32")


@pytest.mark.parametrize(("name", "shape"), CLASSIFIERS)
def test_standard_network_gives_logits(name, shape):
    model = networks.build_network(name, shape, 7)
    logits = keras.ops.convert_to_numpy(model(_batch(shape), training=False))
    assert logits.shape == (2, 7)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert model.layers[-1].name == "logits"


@pytest.mark.parametrize("shape", [(20, 27, 3), (32, 32, 1)])
def test_fcn_gives_per_pixel_logits_at_input_resolution(shape):
    model = networks.build_network("fcn", shape, 4)
    logits = keras.ops.convert_to_numpy(model(_batch(shape), training=False))
    assert logits.shape == (2, shape[0], shape[1], 4)


def test_lenet_still_builds_on_tiny_inputs():
    model = networks.lenet((8, 8, 1), 3)
    assert tuple(model(_batch((8, 8, 1))).shape) == (2, 3)


def test_googlenet_aux_heads_add_two_outputs():
    model = networks.googlenet((32, 32, 3), 5, aux_heads=True)
    outputs = model(_batch((32, 32, 3)), training=False)
    assert [tuple(o.shape) for o in outputs] == [(2, 5)] * 3
    assert networks.googlenet((32, 32, 3), 5).outputs[0].shape[-1] == 5


def test_registry_and_case_insensitive_lookup():
    assert set(networks.STANDARD_NETWORKS) == {
        "lenet",
        "alexnet",
        "googlenet",
        "resnet18",
        "resnet50",
        "fcn",
        "regression",
    }
    assert networks.build_network(" LeNet ", (28, 28, 1), 2).name == "lenet"


def test_unknown_network_lists_known_ones():
    with pytest.raises(ValueError, match=r"'vgg16'.*lenet, alexnet, googlenet"):
        networks.build_network("vgg16", (28, 28, 1), 2)


@pytest.mark.parametrize(
    ("shape", "classes", "quoted"),
    [((28, 28), 2, "(28, 28)"), ((28, 0, 1), 2, "(28, 0, 1)"), ((28, 28, 1), 0, "num_classes 0")],
)
def test_bad_arguments_are_quoted(shape, classes, quoted):
    with pytest.raises(ValueError, match=quoted.replace("(", r"\(").replace(")", r"\)")):
        networks.lenet(shape, classes)


def _small_model() -> keras.Model:
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)]
    )


def test_from_json_round_trip():
    original = _small_model()
    model = networks.from_json(original.to_json())
    assert isinstance(model, keras.Model)
    assert [type(layer) for layer in model.layers] == [type(layer) for layer in original.layers]
    assert model.count_params() == original.count_params()
    assert tuple(model(_batch((6,))).shape) == (2, 3)


def test_from_json_refuses_lambda_layers():
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Lambda(lambda x: x * 2, name="twice")]
    )
    with pytest.raises(ValueError, match=r"'twice' is a Lambda layer"):
        networks.from_json(model.to_json())


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"class_name": "NoSuchLayer"}'])
def test_from_json_rejects_garbage(text):
    with pytest.raises(ValueError, match="custom network"):
        networks.from_json(text)


PYTHON_NETWORK = """
def build_model(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
"""


def test_from_python_refused_unless_allowed(tmp_path):
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').close()\n" + PYTHON_NETWORK
    with pytest.raises(ValueError, match="DIGITS_ALLOW_PYTHON_NETWORKS=1"):
        networks.from_python(source, (4, 4, 1), 3, allowed=False)
    assert not marker.exists()


def test_from_python_builds_when_allowed():
    model = networks.from_python(PYTHON_NETWORK, (4, 4, 1), 3, allowed=True)
    assert tuple(model(_batch((4, 4, 1))).shape) == (2, 3)


def test_from_python_syntax_error_reports_line():
    source = "import math\n\ndef build_model(input_shape, num_classes)\n    return None\n"
    with pytest.raises(ValueError, match="syntax error at line 3"):
        networks.from_python(source, (4, 4, 1), 3, allowed=True)


def test_from_python_runtime_error_reports_line():
    source = "def build_model(input_shape, num_classes):\n    x = 1\n    return x / 0\n"
    with pytest.raises(ValueError, match="ZeroDivisionError at line 3"):
        networks.from_python(source, (4, 4, 1), 3, allowed=True)


@pytest.mark.parametrize(
    ("source", "message"),
    [("x = 1\n", "must define build_model"), ("def build_model(s, n):\n    return 3\n", "int")],
)
def test_from_python_needs_a_model_builder(source, message):
    with pytest.raises(ValueError, match=message):
        networks.from_python(source, (4, 4, 1), 3, allowed=True)
