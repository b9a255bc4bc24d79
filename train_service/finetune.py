"""Fine-tuning a loaded network on a new dataset: same inputs, a new head when the outputs differ.

As fine-tuning does, a network whose class count differs from the new dataset's keeps every layer
but the final classification layer, which is replaced by a fresh one of the right size (the
weightless layers after it, such as the ``logits`` identity, follow it again). A network whose
inputs do not fit the dataset cannot be adapted: that is a ValueError saying both shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

# Layers after the head that carry no weights and keep the last axis: re-applied as they are.
_TRAILING = ("Activation", "Softmax", "ReLU", "Dropout", "Identity")
_SIZE_FIELD = {"Dense": "units", "Conv2D": "filters", "Conv2DTranspose": "filters"}


def check_inputs(model: Any, shape: Sequence[int]) -> None:
    """Raise ValueError if the network cannot take inputs of ``shape`` (H, W, C)."""
    have = tuple(model.input_shape[1:])
    fits = len(have) == len(shape) and all(
        h is None or h == s for h, s in zip(have, shape, strict=True)
    )
    if not fits:
        raise ValueError(
            f"the network takes inputs of shape {have}, but the dataset's are {tuple(shape)}; "
            "resize the dataset (or set crop_size) to fit the network"
        )


def _producer(tensor: Any) -> Any:
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise ValueError("the network is not a functional Keras model")
    return history[0]


def _single_input(layer: Any) -> Any:
    if len(layer._inbound_nodes) != 1:
        raise ValueError(f"layer {layer.name!r} is shared; its head cannot be replaced")
    inputs = layer._inbound_nodes[0].input_tensors
    if len(inputs) != 1:
        raise ValueError(f"layer {layer.name!r} has {len(inputs)} inputs; expected one")
    return inputs[0]


def replace_head(model: Any, outputs: int) -> tuple[Any, str | None]:
    """``model`` with ``outputs`` outputs (a new last layer if needed), and the replaced layer."""
    if len(model.outputs) != 1:
        raise ValueError(f"the network has {len(model.outputs)} outputs; fine-tuning needs one")
    have = model.outputs[0].shape[-1]
    if have == outputs:
        return model, None
    trailing: list[Any] = []
    layer = _producer(model.outputs[0])
    while type(layer).__name__ in _TRAILING and not layer.weights:
        trailing.append(layer)
        layer = _producer(_single_input(layer))
    field = _SIZE_FIELD.get(type(layer).__name__)
    config = layer.get_config()
    if field is None or config.get(field) != have:
        raise ValueError(
            f"the network ends in {type(layer).__name__} {layer.name!r}, not a Dense or "
            f"convolution of {have} outputs, so it cannot be re-headed for {outputs} outputs"
        )
    x = _single_input(layer)
    x = type(layer).from_config({**config, field: outputs})(x)
    for after in reversed(trailing):
        x = type(after).from_config(after.get_config())(x)
    return keras.Model(model.inputs, x, name=model.name), layer.name
