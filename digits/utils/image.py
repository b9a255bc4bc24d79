"""Image loading and resizing with DIGITS's semantics (Pillow; HWC uint8 numpy arrays, RGB order).

Conventions, as in DIGITS: a PIL image's size is (width, height); an array's shape is
(height, width, channels); DIGITS's ``image_dims`` are (height, width, channels).
"""

from __future__ import annotations

import base64
import io
import os
import stat
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

# Use like ``filename.lower().endswith(SUPPORTED_EXTENSIONS)``
SUPPORTED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm")

RESIZE_MODES = ("squash", "crop", "fill", "half_crop")

# Pixel limit for one decoded image. Pillow's own check (Image.MAX_IMAGE_PIXELS, ~89 MP by
# default) also applies and is turned into ImageError, so the effective limit is the lower one.
MAX_PIXELS = 100_000_000
READ_WHOLE_MAX = 64 << 20  # files up to this size are read into memory before decoding


class ImageError(ValueError):
    """An image cannot be read: missing, empty, corrupt, truncated, not an image, or too large."""


def _describe(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    return repr(os.fspath(source))


def load_image(
    path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview,
    channels: int | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Read an image as a PIL image in mode "L" (channels=1) or "RGB" (channels=3); ImageError."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, not {channels!r}")
    name = _describe(path_or_bytes)
    source: io.BytesIO | BinaryIO
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        data = bytes(path_or_bytes)
        if not data:
            raise ImageError(f"image {name} is empty (0 bytes)")
        source = io.BytesIO(data)
    else:
        source = _open_file(path_or_bytes, name)
    return _with_channels(_decode(source, name, max_pixels), channels)


def read_image(
    path: str | os.PathLike[str], channels: int | None = None, *, max_pixels: int = MAX_PIXELS
) -> tuple[Image.Image, bytes]:
    """``load_image(path, channels)`` and the file's bytes.

    The image keeps its ``format`` (say "PNG") only if no conversion was needed: then the bytes
    decode to exactly its pixels, and can be stored as they are.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, not {channels!r}")
    name = _describe(path)
    source = _open_file(path, name)
    if isinstance(source, io.BytesIO):
        data = source.getvalue()
    else:
        with source:
            try:
                data = source.read()
            except OSError as exc:
                raise ImageError(f"image {name} cannot be read: {exc.strerror or exc}") from exc
        source = io.BytesIO(data)
    return _with_channels(_decode(source, name, max_pixels), channels), data


def _decode(source: io.BytesIO | BinaryIO, name: str, max_pixels: int) -> Image.Image:
    """Decode ``source`` (closing it) into an "L" or "RGB" image; ImageError says what is wrong."""
    try:
        # Our own file object: the decoded image outlives it, so no defensive copy is needed.
        with source, warnings.catch_warnings():
            # Pillow warns (rather than fails) between 1x and 2x its pixel limit: refuse both.
            # catch_warnings is process-global; racing threads can at worst leave this
            # "error" filter installed, which is the behaviour we want anyway.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image {name} is {width}x{height} = {width * height} pixels, over the limit "
                    f"of {max_pixels} pixels (decompression bomb?)"
                )
            image.load()
        return _normalize_mode(image, name)
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"image {name} is too large (decompression bomb?): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"file {name} is not an image Pillow can identify") from exc
    except Exception as exc:  # a damaged file can make any decoder raise anything
        raise ImageError(
            f"image {name} is corrupt or truncated: {type(exc).__name__}: {exc}"
        ) from exc


def _open_file(path: str | os.PathLike[str], name: str) -> BinaryIO | io.BytesIO:
    """A regular, non-empty file, read whole if not huge; ImageError says why it cannot be."""
    try:
        info = os.stat(path)  # before opening: a FIFO or a device is refused, never opened
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"image {name} is not a regular file")
        if info.st_size == 0:
            raise ImageError(f"image {name} is empty (0 bytes)")
        fp = open(path, "rb")  # noqa: SIM115 - closed here or by the caller
        if info.st_size > READ_WHOLE_MAX:
            return fp
        with fp:
            # Decoders read in small pieces: from memory, not through the file, is much faster.
            return io.BytesIO(fp.read())
    except OSError as exc:
        raise ImageError(f"image {name} cannot be read: {exc.strerror or exc}") from exc


def _with_channels(image: Image.Image, channels: int | None) -> Image.Image:
    """An "L" or "RGB" image converted to ``channels`` (None keeps it)."""
    if channels == 1 and image.mode != "L":
        return image.convert("L")
    if channels == 3 and image.mode != "RGB":
        return image.convert("RGB")
    return image


def _normalize_mode(image: Image.Image, name: str) -> Image.Image:
    """Return ``image`` in mode "L" or "RGB"; transparency goes onto white, as in DIGITS."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image  # callers never modify it in place
    if mode == "1":
        return image.convert("L")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    if mode in ("LA", "La", "PA", "P", "RGBA", "RGBa", "RGBX"):
        rgba = image.convert("RGBA")
        grey = mode in ("LA", "La")
        white: int | tuple[int, int, int] = 255 if grey else (255, 255, 255)
        background = Image.new("L" if grey else "RGB", image.size, white)
        background.paste(rgba.convert("L" if grey else "RGB"), mask=rgba.getchannel("A"))
        return background
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image).astype(np.float64)
        if mode.startswith("I;16") or array.max(initial=0) > 255:
            array = array / 257.0  # 16-bit samples to 8-bit, keeping the relative scale
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    raise ImageError(f"image {name} has unsupported mode {mode!r}")


def _to_pil(image: Image.Image | np.ndarray, channels: int | None) -> Image.Image:
    """Return ``image`` as a PIL image in mode "L" or "RGB", converted to ``channels``."""
    if isinstance(image, Image.Image):
        pil = _normalize_mode(image, "<PIL image>")
    elif isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            array = np.clip(array, 0, 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim == 2:
            pil = Image.fromarray(array)
        elif array.ndim == 3 and array.shape[2] == 3:
            pil = Image.fromarray(array)
        elif array.ndim == 3 and array.shape[2] == 4:
            pil = _normalize_mode(Image.fromarray(array), "<array>")
        else:
            raise ValueError(f"invalid image shape {array.shape}; expected HxW or HxWx1/3/4")
    else:
        raise ValueError(f"expected a PIL image or a numpy array, not {type(image).__name__}")
    return _with_channels(pil, channels)


def _pil_array(pil: Image.Image) -> np.ndarray:
    """An "L" or "RGB" image as a (read-only) uint8 HWC array, copied once."""
    width, height = pil.size
    channels = 1 if pil.mode == "L" else 3
    return np.frombuffer(pil.tobytes(), np.uint8).reshape(height, width, channels)


def _to_array(image: Image.Image | np.ndarray, channels: int | None) -> np.ndarray:
    """Return ``image`` as a uint8 HWC array with ``channels`` channels (1 or 3)."""
    return _pil_array(_to_pil(image, channels))


def _resize(pil: Image.Image, height: int, width: int) -> Image.Image:
    """Bilinear resize (as DIGITS's scipy.misc.imresize did); the same image if the size fits."""
    if pil.size == (width, height):
        return pil
    return pil.resize((width, height), Image.Resampling.BILINEAR)


def _crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Cut the centre ``height`` x ``width`` out of an array at least that large."""
    top = (array.shape[0] - height) // 2
    left = (array.shape[1] - width) // 2
    return array[top : top + height, left : left + width]


def _pad_noise(array: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Centre an array in a ``height`` x ``width`` canvas of uniform random noise."""
    canvas = rng.integers(0, 256, size=(height, width, array.shape[2]), dtype=np.uint8)
    top = (height - array.shape[0]) // 2
    left = (width - array.shape[1]) // 2
    canvas[top : top + array.shape[0], left : left + array.shape[1]] = array
    return canvas


def resize_image(
    image: np.ndarray | Image.Image,
    height: int,
    width: int,
    channels: int | None = None,
    resize_mode: str | None = None,
    *,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Resize to a (height, width, channels) uint8 array with DIGITS's resize modes.

    squash: stretch to the size. crop: scale to cover, cut the centre. fill: scale to fit, pad
    the short side with random noise (as DIGITS did; odd padding puts the extra pixel after the
    image). half_crop: scale by the mean of both ratios, cut the long side, pad the short one
    with noise. ``rng`` makes the noise reproducible. The result is always 3-D.
    """
    return resize_image_with_pil(image, height, width, channels, resize_mode, rng=rng)[0]


def resize_image_with_pil(
    image: np.ndarray | Image.Image,
    height: int,
    width: int,
    channels: int | None = None,
    resize_mode: str | None = None,
    *,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, Image.Image | None]:
    """``resize_image``'s array, and the PIL image it was copied from (None for noise padding).

    Encoding the PIL image gives the same bytes as encoding the array, without converting back.
    """
    mode = "squash" if resize_mode is None else resize_mode
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode {mode!r} is not supported; use one of {RESIZE_MODES}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, not {channels!r}")
    for label, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{label} must be a positive integer, not {value!r}")
    height, width = int(height), int(width)
    pil = _to_pil(image, channels)
    src_w, src_h = pil.size
    width_ratio = src_w / width
    height_ratio = src_h / height
    if mode == "squash" or width_ratio == height_ratio:
        pil = _resize(pil, height, width)
        return _pil_array(pil), pil
    if mode == "crop":
        ratio = min(width_ratio, height_ratio)
        scaled = _resize(pil, max(height, round(src_h / ratio)), max(width, round(src_w / ratio)))
        top = (scaled.size[1] - height) // 2
        left = (scaled.size[0] - width) // 2
        pil = scaled.crop((left, top, left + width, top + height))  # as _crop cuts arrays
        return _pil_array(pil), pil
    rng = rng if rng is not None else np.random.default_rng()
    if mode == "fill":
        ratio = max(width_ratio, height_ratio)
        scaled = _resize(
            pil,
            min(height, max(1, round(src_h / ratio))),
            min(width, max(1, round(src_w / ratio))),
        )
        return _pad_noise(_pil_array(scaled), height, width, rng), None
    # half_crop
    ratio = (width_ratio + height_ratio) / 2.0
    array = _pil_array(_resize(pil, max(1, round(src_h / ratio)), max(1, round(src_w / ratio))))
    cropped = _crop(array, min(height, array.shape[0]), min(width, array.shape[1]))
    return _pad_noise(cropped, height, width, rng), None


def image_to_array(image: Image.Image | np.ndarray, channels: int | None = None) -> np.ndarray:
    """Return an image as a uint8 HWC array (1 or 3 channels), without resizing."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, not {channels!r}")
    return np.ascontiguousarray(_to_array(image, channels))


def embed_image_html(image: Image.Image | np.ndarray | None, fmt: str = "png") -> str | None:
    """Return an image as a ``data:`` URL for an <img> tag (DIGITS's embed_image_html)."""
    if image is None:
        return None
    if isinstance(image, np.ndarray):
        array = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    fmt = (image.format or fmt).lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
