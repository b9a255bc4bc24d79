"""DIGITS's standard networks as Keras 3 builders, and custom networks from JSON or Python.

Every network takes float32 HWC images, already mean-subtracted and scaled by the input pipeline
(LeNet's 1/255 included), and returns logits: no softmax. The trainer compiles with
``from_logits=True``; inference applies ``keras.ops.softmax`` itself. Each model ends in an identity
layer named ``logits`` with dtype float32, so logits stay float32 under mixed precision.

The builders use built-in Keras layers only, so a saved model loads anywhere without this module.
Two departures from DIGITS's Caffe prototxts follow from that: no LRN layers (AlexNet, GoogLeNet),
and no grouped convolutions in AlexNet (TensorFlow has none on CPU); torchvision drops both too.
Pooling falls back to ``padding="same"`` where a feature map is smaller than the window, so the big
networks still build (if pointlessly) on 32x32 inputs.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import layers

__all__ = [
    "STANDARD_NETWORKS",
    "alexnet",
    "build_network",
    "fcn",
    "from_json",
    "from_python",
    "googlenet",
    "lenet",
    "regression",
    "resnet18",
    "resnet50",
]

# Layers whose config carries code or loads outside files: never deserialized from user JSON.
_UNSAFE_CLASSES = frozenset({"Lambda", "__lambda__", "TFSMLayer"})
_USER_FILE = "<custom network>"


def _check(input_shape: Sequence[int], num_classes: int) -> tuple[tuple[int, int, int], int]:
    """The validated (H, W, C) and class count, or a ValueError quoting the bad value."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(f"input_shape {input_shape!r} is not (height, width, channels)") from None
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ValueError(f"input_shape {input_shape!r} is not (height, width, channels) integers")
    if min(shape) < 1:
        raise ValueError(f"input_shape {input_shape!r} has a dimension below 1")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes {num_classes!r} is not an integer >= 1")
    return shape, num_classes  # type: ignore[return-value]


def _logits(x: Any) -> Any:
    """The common last layer: identity, float32, named ``logits``."""
    return layers.Activation("linear", dtype="float32", name="logits")(x)


def _side(x: Any) -> int:
    """The smaller spatial side of a (batch, H, W, C) tensor."""
    return min(int(x.shape[1]), int(x.shape[2]))


def _pool(x: Any, size: int, stride: int, *, kind: str = "max", name: str | None = None) -> Any:
    """Caffe-style pooling; "same" padding where the map is smaller than the window."""
    padding = "valid" if _side(x) >= size else "same"
    cls = layers.MaxPooling2D if kind == "max" else layers.AveragePooling2D
    return cls(size, strides=stride, padding=padding, name=name)(x)


def lenet(input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """LeNet as in DIGITS (conv20-pool-conv50-pool-fc500-fc), for 28x28 MNIST-like inputs."""
    shape, num_classes = _check(input_shape, num_classes)
    inputs = keras.Input(shape, name="data")
    # DIGITS's LeNet has no activation after the convolutions; valid padding unless too small.
    padding = "valid" if min(shape[:2]) >= 16 else "same"
    x = layers.Conv2D(20, 5, padding=padding, name="conv1")(inputs)
    x = _pool(x, 2, 2, name="pool1")
    x = layers.Conv2D(50, 5, padding=padding, name="conv2")(x)
    x = _pool(x, 2, 2, name="pool2")
    x = layers.Flatten()(x)
    x = layers.Dense(500, activation="relu", name="ip1")(x)
    x = layers.Dense(num_classes, name="ip2")(x)
    return keras.Model(inputs, _logits(x), name="lenet")


def alexnet(input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """AlexNet as in DIGITS (five convolutions, three fully connected layers), for 224x224."""
    shape, num_classes = _check(input_shape, num_classes)
    inputs = keras.Input(shape, name="data")
    x = layers.Conv2D(96, 11, strides=4, padding="same", activation="relu", name="conv1")(inputs)
    x = _pool(x, 3, 2, name="pool1")
    x = layers.Conv2D(256, 5, padding="same", activation="relu", name="conv2")(x)
    x = _pool(x, 3, 2, name="pool2")
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="conv5")(x)
    x = _pool(x, 3, 2, name="pool5")
    x = layers.Flatten()(x)
    x = layers.Dense(4096, activation="relu", name="fc6")(x)
    x = layers.Dropout(0.5, name="drop6")(x)
    x = layers.Dense(4096, activation="relu", name="fc7")(x)
    x = layers.Dropout(0.5, name="drop7")(x)
    x = layers.Dense(num_classes, name="fc8")(x)
    return keras.Model(inputs, _logits(x), name="alexnet")


def _conv_relu(x: Any, filters: int, size: int, name: str, stride: int = 1) -> Any:
    """A "same"-padded convolution with ReLU."""
    return layers.Conv2D(
        filters, size, strides=stride, padding="same", activation="relu", name=name
    )(x)


def _inception(x: Any, name: str, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int) -> Any:
    """An Inception v1 module: 1x1, 1x1-3x3, 1x1-5x5 and pool-1x1 branches, concatenated."""
    b1 = _conv_relu(x, c1, 1, f"{name}_1x1")
    b2 = _conv_relu(_conv_relu(x, c3r, 1, f"{name}_3x3_reduce"), c3, 3, f"{name}_3x3")
    b3 = _conv_relu(_conv_relu(x, c5r, 1, f"{name}_5x5_reduce"), c5, 5, f"{name}_5x5")
    b4 = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    b4 = _conv_relu(b4, pp, 1, f"{name}_pool_proj")
    return layers.Concatenate(name=f"{name}_output")([b1, b2, b3, b4])


def _aux_head(x: Any, name: str, num_classes: int) -> Any:
    """GoogLeNet's auxiliary classifier (avg pool 5_3, 1x1 conv, fc1024, dropout 0.7, fc)."""
    x = _pool(x, 5, 3, kind="avg", name=f"{name}_ave_pool")
    x = _conv_relu(x, 128, 1, f"{name}_conv")
    x = layers.Flatten()(x)
    x = layers.Dense(1024, activation="relu", name=f"{name}_fc")(x)
    x = layers.Dropout(0.7, name=f"{name}_drop_fc")(x)
    x = layers.Dense(num_classes, name=f"{name}_classifier")(x)
    return layers.Activation("linear", dtype="float32", name=name)(x)


def googlenet(
    input_shape: Sequence[int], num_classes: int, *, aux_heads: bool = False
) -> keras.Model:
    """GoogLeNet (Inception v1), for 224x224; ``aux_heads`` adds outputs ``loss1``, ``loss2``.

    With auxiliary heads the model has three outputs, ``[logits, loss1, loss2]``; DIGITS weighted
    the auxiliary losses 0.3 each.
    """
    shape, num_classes = _check(input_shape, num_classes)
    same_pool = {"strides": 2, "padding": "same"}
    inputs = keras.Input(shape, name="data")
    x = _conv_relu(inputs, 64, 7, "conv1_7x7_s2", stride=2)
    x = layers.MaxPooling2D(3, name="pool1_3x3_s2", **same_pool)(x)
    x = _conv_relu(x, 64, 1, "conv2_3x3_reduce")
    x = _conv_relu(x, 192, 3, "conv2_3x3")
    x = layers.MaxPooling2D(3, name="pool2_3x3_s2", **same_pool)(x)
    x = _inception(x, "inception_3a", 64, 96, 128, 16, 32, 32)
    x = _inception(x, "inception_3b", 128, 128, 192, 32, 96, 64)
    x = layers.MaxPooling2D(3, name="pool3_3x3_s2", **same_pool)(x)
    x = _inception(x, "inception_4a", 192, 96, 208, 16, 48, 64)
    aux1 = _aux_head(x, "loss1", num_classes) if aux_heads else None
    x = _inception(x, "inception_4b", 160, 112, 224, 24, 64, 64)
    x = _inception(x, "inception_4c", 128, 128, 256, 24, 64, 64)
    x = _inception(x, "inception_4d", 112, 144, 288, 32, 64, 64)
    aux2 = _aux_head(x, "loss2", num_classes) if aux_heads else None
    x = _inception(x, "inception_4e", 256, 160, 320, 32, 128, 128)
    x = layers.MaxPooling2D(3, name="pool4_3x3_s2", **same_pool)(x)
    x = _inception(x, "inception_5a", 256, 160, 320, 32, 128, 128)
    x = _inception(x, "inception_5b", 384, 192, 384, 48, 128, 128)
    x = layers.GlobalAveragePooling2D(name="pool5")(x)
    x = layers.Dropout(0.4, name="pool5_drop")(x)
    x = _logits(layers.Dense(num_classes, name="loss3_classifier")(x))
    outputs = [x, aux1, aux2] if aux_heads else x
    return keras.Model(inputs, outputs, name="googlenet")


def _conv_bn(x: Any, filters: int, size: int, stride: int, name: str, relu: bool = True) -> Any:
    """Convolution (no bias), batch normalization and, optionally, ReLU."""
    x = layers.Conv2D(
        filters,
        size,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(epsilon=1e-5, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def _basic_block(x: Any, filters: int, stride: int, name: str) -> Any:
    """ResNet's basic block: two 3x3 convolutions and a shortcut."""
    y = _conv_bn(x, filters, 3, stride, f"{name}_1")
    y = _conv_bn(y, filters, 3, 1, f"{name}_2", relu=False)
    if stride != 1 or x.shape[-1] != filters:
        x = _conv_bn(x, filters, 1, stride, f"{name}_0", relu=False)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([x, y]))


def _bottleneck_block(x: Any, filters: int, stride: int, name: str) -> Any:
    """ResNet's bottleneck block (1x1, strided 3x3, 1x1 x4) and a shortcut."""
    y = _conv_bn(x, filters, 1, 1, f"{name}_1")
    y = _conv_bn(y, filters, 3, stride, f"{name}_2")
    y = _conv_bn(y, 4 * filters, 1, 1, f"{name}_3", relu=False)
    if stride != 1 or x.shape[-1] != 4 * filters:
        x = _conv_bn(x, 4 * filters, 1, stride, f"{name}_0", relu=False)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([x, y]))


def _resnet(
    name: str, block: Callable[..., Any], depths: Sequence[int], shape: tuple, num_classes: int
) -> keras.Model:
    """A ResNet: 7x7/2 stem, 3x3/2 max pool, four stages of blocks, global average pool, fc."""
    inputs = keras.Input(shape, name="data")
    x = _conv_bn(inputs, 64, 7, 2, "conv1")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    for stage, (filters, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
        for i in range(depth):
            stride = 2 if stage > 0 and i == 0 else 1
            x = block(x, filters, stride, f"conv{stage + 2}_block{i + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, _logits(x), name=name)


def resnet18(input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """ResNet-18 (basic blocks, 2-2-2-2), for 224x224."""
    shape, num_classes = _check(input_shape, num_classes)
    return _resnet("resnet18", _basic_block, (2, 2, 2, 2), shape, num_classes)


def resnet50(input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """ResNet-50 (bottleneck blocks, 3-4-6-3, stride on the 3x3), for 224x224."""
    shape, num_classes = _check(input_shape, num_classes)
    return _resnet("resnet50", _bottleneck_block, (3, 4, 6, 3), shape, num_classes)


def fcn(input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """A small FCN-8s-style segmentation network: per-pixel logits (H, W, num_classes)."""
    shape, num_classes = _check(input_shape, num_classes)
    height, width = shape[:2]
    # Pad to a multiple of 8 (three 2x poolings) and crop back, so any size comes out exact.
    pad_h, pad_w = -height % 8, -width % 8
    inputs = keras.Input(shape, name="data")
    x = (
        layers.ZeroPadding2D(((0, pad_h), (0, pad_w)), name="pad")(inputs)
        if pad_h + pad_w
        else inputs
    )
    skips = []
    for i, filters in enumerate((32, 64, 128), start=1):
        x = _conv_relu(x, filters, 3, f"conv{i}_1")
        x = _conv_relu(x, filters, 3, f"conv{i}_2")
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
        skips.append(x)
    x = _conv_relu(x, 256, 3, "fc6")
    x = layers.Dropout(0.5, name="drop6")(x)
    x = layers.Conv2D(num_classes, 1, name="score_fr")(x)
    # Upsample 2x at a time, fusing the scores of the 1/4 and 1/2 resolution pools (FCN-8s).
    for i, skip in ((2, skips[1]), (1, skips[0])):
        x = layers.Conv2DTranspose(num_classes, 4, strides=2, padding="same", name=f"up{i}")(x)
        score = layers.Conv2D(num_classes, 1, name=f"score_pool{i}")(skip)
        x = layers.Add(name=f"fuse_pool{i}")([x, score])
    x = layers.Conv2DTranspose(num_classes, 4, strides=2, padding="same", name="up0")(x)
    if pad_h + pad_w:
        x = layers.Cropping2D(((0, pad_h), (0, pad_w)), name="crop")(x)
    return keras.Model(inputs, _logits(x), name="fcn")


def regression(input_shape: Sequence[int], num_outputs: int) -> keras.Model:
    """A small conv net with a linear head: ``num_outputs`` real values (generic models)."""
    shape, num_outputs = _check(input_shape, num_outputs)
    inputs = keras.Input(shape, name="data")
    x = inputs
    for i, filters in enumerate((16, 32, 64), start=1):
        x = _conv_relu(x, filters, 3, f"conv{i}")
        x = _pool(x, 2, 2, name=f"pool{i}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(64, activation="relu", name="fc1")(x)
    x = layers.Dense(num_outputs, name="fc2")(x)
    return keras.Model(inputs, _logits(x), name="regression")


STANDARD_NETWORKS: dict[str, Callable[[Sequence[int], int], keras.Model]] = {
    "lenet": lenet,
    "alexnet": alexnet,
    "googlenet": googlenet,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "fcn": fcn,
    "regression": regression,
}


def build_network(name: str, input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """The standard network ``name`` (case-insensitive), uncompiled, returning logits."""
    builder = STANDARD_NETWORKS.get(str(name).strip().lower())
    if builder is None:
        known = ", ".join(STANDARD_NETWORKS)
        raise ValueError(f"unknown standard network {name!r}; known networks: {known}")
    return builder(input_shape, num_classes)


def _refuse_code(node: Any) -> None:
    """Raise ValueError if a model config holds a layer that runs code or loads files."""
    if isinstance(node, dict):
        kind = node.get("class_name")
        if kind in _UNSAFE_CLASSES:
            config = node.get("config")
            name = config.get("name") if isinstance(config, dict) else None
            raise ValueError(
                f"custom network: layer {name or kind!r} is a {kind} layer, which could run "
                "arbitrary code; use built-in Keras layers only"
            )
        for value in node.values():
            _refuse_code(value)
    elif isinstance(node, list):
        for value in node:
            _refuse_code(value)


def from_json(text: str) -> keras.Model:
    """A model from Keras JSON (``model.to_json()``), refusing Lambda layers and other code."""
    try:
        config = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"custom network is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError("custom network JSON must be a Keras model config (model.to_json())")
    # Checked here too: Keras's safe mode can be switched off process-wide.
    _refuse_code(config)
    try:
        model = keras.models.model_from_json(text)
    except Exception as exc:
        raise ValueError(f"custom network JSON does not load: {exc}") from None
    if not isinstance(model, keras.Model):
        raise ValueError(f"custom network JSON is a {type(model).__name__}, not a keras.Model")
    return model


def _user_error(exc: BaseException) -> str:
    """A message for an exception raised by user code, naming its deepest line in that code."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _USER_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" at line {line}" if line is not None else ""
    return f"custom network: {type(exc).__name__}{where}: {exc}"


def from_python(
    source: str, input_shape: Sequence[int], num_classes: int, *, allowed: bool
) -> keras.Model:
    """Run user code defining ``build_model(input_shape, num_classes)``, if the operator allows."""
    if not allowed:
        raise ValueError(
            "custom Python networks run arbitrary code on the training worker and are disabled; "
            "the operator must set DIGITS_ALLOW_PYTHON_NETWORKS=1 to allow them"
        )
    shape, num_classes = _check(input_shape, num_classes)
    try:
        code = compile(source, _USER_FILE, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ValueError(f"custom network: syntax error at line {exc.lineno}: {exc.msg}") from None
    module = types.ModuleType("digits_custom_network")
    module.__dict__["keras"] = keras
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:
        raise ValueError(_user_error(exc)) from exc
    build = module.__dict__.get("build_model")
    if not callable(build):
        raise ValueError("custom network must define build_model(input_shape, num_classes)")
    try:
        model = build(shape, num_classes)
    except (Exception, SystemExit) as exc:
        raise ValueError(_user_error(exc)) from exc
    if not isinstance(model, keras.Model):
        raise ValueError(f"build_model returned a {type(model).__name__}, not a keras.Model")
    return model
