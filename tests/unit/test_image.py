"""digits.utils.image: loading with clear errors, and DIGITS's resize modes."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from digits.utils.image import (
    RESIZE_MODES,
    ImageError,
    embed_image_html,
    image_to_array,
    load_image,
    resize_image,
)


def _png_bytes(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width`` x ``height`` pixels, with no image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _save(path, array: np.ndarray, fmt: str | None = None):
    Image.fromarray(array).save(path, format=fmt)
    return path


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)


def test_load_png_and_jpeg(tmp_path, rgb):
    png = load_image(_save(tmp_path / "a.png", rgb))
    assert png.mode == "RGB" and png.size == (30, 20)
    assert np.array_equal(np.asarray(png), rgb)
    jpg = load_image(_save(tmp_path / "a.jpg", rgb), channels=1)
    assert jpg.mode == "L" and jpg.size == (30, 20)


def test_load_from_bytes_and_channel_conversion(tmp_path):
    grey = np.full((8, 8), 77, dtype=np.uint8)
    data = _save(tmp_path / "g.png", grey).read_bytes()
    image = load_image(data, channels=3)
    assert image.mode == "RGB"
    assert np.all(np.asarray(image) == 77)
    assert load_image(data).mode == "L"


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    image = load_image(_save(tmp_path / "t.png", rgba))
    assert image.mode == "RGB"
    assert np.all(np.asarray(image) == 255)


def test_sixteen_bit_png_scales_to_eight_bits(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(path)
    image = load_image(path)
    assert image.mode == "L" and np.all(np.asarray(image) == 255)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("zero.png", b""),
        ("text.png", b"hello, I am not an image\n"),
        ("random.jpg", bytes(range(256)) * 4),
    ],
)
def test_bad_files_raise_image_error_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=name):
        load_image(path)


def test_truncated_png_raises_image_error(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    data = _save(tmp_path / "full.png", big).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.png.*(corrupt|truncated)"):
        load_image(cut)


def test_truncated_jpeg_raises_image_error(tmp_path, rgb):
    data = _save(tmp_path / "full.jpg", np.tile(rgb, (4, 4, 1))).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match=r"cut\.jpg"):
        load_image(cut)


def test_missing_file_and_directory_raise_image_error(tmp_path):
    with pytest.raises(ImageError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


def test_bytes_errors_describe_the_input():
    with pytest.raises(ImageError, match="0 bytes"):
        load_image(b"")
    with pytest.raises(ImageError, match="5 bytes"):
        load_image(b"nope!")


def test_decompression_bomb_header_is_refused(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bytes(100_000, 100_000))
    with pytest.raises(ImageError, match=r"bomb\.png.*(too large|limit)"):
        load_image(bomb)


def test_pixel_limit_is_enforced(tmp_path, rgb):
    path = _save(tmp_path / "small.png", rgb)
    with pytest.raises(ImageError, match=r"small\.png.*600 pixels.*limit of 100"):
        load_image(path, max_pixels=100)


def test_pillow_bomb_warning_becomes_an_error(tmp_path, rgb, monkeypatch):
    # 600 pixels lies between Pillow's limit and twice it: Pillow only warns, we refuse.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)
    path = _save(tmp_path / "warn.png", rgb)
    with pytest.raises(ImageError, match=r"warn\.png.*too large"):
        load_image(path)


def test_load_rejects_bad_channels(tmp_path, rgb):
    with pytest.raises(ValueError, match="channels"):
        load_image(_save(tmp_path / "a.png", rgb), channels=2)


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("src", [(20, 30), (30, 20), (17, 17), (1, 40), (40, 1)])
@pytest.mark.parametrize(("height", "width", "channels"), [(16, 16, 3), (9, 24, 1), (31, 7, 3)])
def test_resize_shapes(mode, src, height, width, channels):
    array = np.random.default_rng(2).integers(0, 256, size=(*src, 3), dtype=np.uint8)
    out = resize_image(array, height, width, channels, mode, rng=np.random.default_rng(0))
    assert out.shape == (height, width, channels)
    assert out.dtype == np.uint8


def test_resize_same_size_keeps_pixels(rgb):
    out = resize_image(rgb, 20, 30, 3, "crop")
    assert np.array_equal(out, rgb)


def test_resize_accepts_pil_and_greyscale_arrays(rgb):
    grey = resize_image(np.full((10, 10), 9, np.uint8), 5, 5, 3)
    assert grey.shape == (5, 5, 3) and np.all(grey == 9)
    pil = resize_image(Image.fromarray(rgb), 10, 15)
    assert pil.shape == (10, 15, 3)
    assert resize_image(np.full((6, 6, 1), 3, np.uint8), 3, 3).shape == (3, 3, 1)


def _thirds(height: int, width: int) -> np.ndarray:
    """Left third red, middle third green, right third blue."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    array[:, :third, 0] = 255
    array[:, third : 2 * third, 1] = 255
    array[:, 2 * third :, 2] = 255
    return array


def test_squash_keeps_everything():
    out = resize_image(_thirds(20, 60), 20, 20, 3, "squash")
    assert out[10, 1, 0] > 200 and out[10, 10, 1] > 200 and out[10, 18, 2] > 200


def test_crop_keeps_the_centre():
    out = resize_image(_thirds(20, 60), 20, 20, 3, "crop")
    assert np.all(out[:, :, 1] == 255) and np.all(out[:, :, [0, 2]] == 0)


def test_fill_pads_the_short_side_with_noise():
    array = np.full((20, 60, 3), 128, dtype=np.uint8)
    out = resize_image(array, 60, 60, 3, "fill", rng=np.random.default_rng(0))
    assert np.all(out[20:40] == 128)
    pad = np.concatenate([out[:20], out[40:]])
    assert pad.std() > 30  # noise, not a constant border


def test_fill_noise_is_reproducible_with_rng():
    array = np.full((10, 40, 1), 5, dtype=np.uint8)
    first = resize_image(array, 40, 40, 1, "fill", rng=np.random.default_rng(7))
    second = resize_image(array, 40, 40, 1, "fill", rng=np.random.default_rng(7))
    assert np.array_equal(first, second)


def test_half_crop_crops_the_long_side_and_pads_the_short():
    array = _thirds(20, 60)
    # ratios 60/40 and 20/40 average to 1: no scaling, width cut to 40, height padded to 40
    out = resize_image(array, 40, 40, 3, "half_crop", rng=np.random.default_rng(0))
    body = out[10:30]
    assert np.array_equal(body, array[:, 10:50])
    assert out[:10].std() > 30 and out[30:].std() > 30


def test_resize_rejects_bad_mode_and_arguments(rgb):
    with pytest.raises(ValueError, match=r"'stretch'.*squash.*crop.*fill.*half_crop"):
        resize_image(rgb, 10, 10, 3, "stretch")
    with pytest.raises(ValueError, match="channels"):
        resize_image(rgb, 10, 10, 4)
    with pytest.raises(ValueError, match="height"):
        resize_image(rgb, 0, 10)
    with pytest.raises(ValueError, match="shape"):
        resize_image(np.zeros((4, 4, 2), np.uint8), 2, 2)


def test_image_to_array_and_embed(rgb):
    assert image_to_array(Image.fromarray(rgb), 1).shape == (20, 30, 1)
    assert embed_image_html(rgb).startswith("data:image/png;base64,")
    assert embed_image_html(None) is None
