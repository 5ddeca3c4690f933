"""Decoding to 8-bit RGB: high bit depths, decompression bombs, transparency."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from format_writers import make_image, write_plain_tar
from PIL import Image

from dsmd.data import images, transforms, viewing
from dsmd.data.images import decode_image, load_image, tar_ref
from dsmd.errors import DsmdError

# an 8-bit horizontal gradient, 0..255, 4 rows
GRADIENT = np.tile(np.arange(256, dtype=np.uint8), (4, 1))


def _gray(path) -> np.ndarray:
    rgb = np.asarray(load_image(path))
    assert rgb.dtype == np.uint8 and rgb.shape == GRADIENT.shape + (3,)
    assert (rgb == rgb[..., :1]).all()  # gray stays gray
    return rgb[..., 0].astype(int)


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def _pgm16(path, values: np.ndarray):
    h, w = values.shape
    path.write_bytes(f"P5\n{w} {h}\n65535\n".encode() + values.astype(">u2").tobytes())


def _tiff(path, values: np.ndarray, mode: str | None = None):
    img = Image.fromarray(values) if mode is None else Image.frombytes(mode, values.shape[::-1], values.tobytes())
    img.save(path, format="TIFF")


def test_16_bit_png_decodes_like_its_8_bit_version(tmp_path):
    Image.fromarray(GRADIENT).save(tmp_path / "8.png")
    noise = np.random.default_rng(0).integers(0, 128, GRADIENT.shape)  # low bits that rounding drops
    Image.fromarray(np.minimum(GRADIENT.astype(int) * 257 + noise, 65535).astype(np.uint16)).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    assert np.array_equal(_gray(tmp_path / "16.png"), _gray(tmp_path / "8.png"))
    assert np.array_equal(
        np.asarray(decode_image((tmp_path / "16.png").read_bytes(), "16.png")),
        np.asarray(load_image(tmp_path / "16.png")),
    )


@pytest.mark.parametrize(
    "name, write, mode",
    [
        ("big-endian.tif", lambda p: _tiff(p, GRADIENT.astype(">u2") * 257, "I;16B"), "I;16B"),
        ("little-endian.tif", lambda p: _tiff(p, GRADIENT.astype("<u2") * 257, "I;16L"), "I;16"),
        ("16-bit.pgm", lambda p: _pgm16(p, GRADIENT.astype(np.uint16) * 257), "I"),  # PIL: mode I, 0..65535
        ("int-8-bit.tif", lambda p: _tiff(p, GRADIENT.astype(np.int32)), "I"),  # values in 0..255: kept
        ("int-negative.tif", lambda p: _tiff(p, GRADIENT.astype(np.int32) * 1000 - 7000), "I"),  # stretched
        ("float-unit.tif", lambda p: _tiff(p, GRADIENT.astype(np.float32) / 255), "F"),  # 0..1: times 255
        ("float-8-bit.tif", lambda p: _tiff(p, GRADIENT.astype(np.float32)), "F"),  # 0..255: kept
        ("float-wide.tif", lambda p: _tiff(p, GRADIENT.astype(np.float32) * 3 - 100), "F"),  # stretched
    ],
)
def test_high_bit_depth_modes_decode_like_the_8_bit_gradient(tmp_path, name, write, mode):
    write(tmp_path / name)
    assert Image.open(tmp_path / name).mode == mode
    assert np.abs(_gray(tmp_path / name) - GRADIENT).max() <= 1


def test_16_bit_modes_in_memory_and_their_transparent_value():
    for mode, dtype in (("I;16N", "=u2"), ("I;16L", "<u2"), ("I;16B", ">u2")):
        img = Image.frombytes(mode, (256, 4), (GRADIENT.astype(dtype) * 257).tobytes())
        assert np.array_equal(np.asarray(viewing.as_seen(img))[..., 0], GRADIENT)
    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 1000, 65535]], np.uint16)).save(buf, format="PNG", transparency=1000)
    assert np.asarray(decode_image(buf.getvalue(), "t.png"))[0, :, 0].tolist() == [0, 255, 255]


def test_16_bit_rgb_png_is_reduced_by_pil():
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = np.array([[[0, 0, 0], [257 * 100, 0, 0], [65535] * 3, [257 * 7, 257 * 8, 257 * 9]]], ">u2")
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 1, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" + pixels.tobytes()))
        + chunk(b"IEND", b"")
    )
    assert np.asarray(decode_image(png, "rgb16.png")).tolist() == [[[0, 0, 0], [100, 0, 0], [255] * 3, [7, 8, 9]]]


def test_nan_pixels_are_refused(tmp_path):
    _tiff(tmp_path / "nan.tif", np.array([[0.0, np.nan]], np.float32))
    with pytest.raises(DsmdError, match=r"cannot read image .*nan.tif: mode F image has NaN or infinite pixels"):
        load_image(tmp_path / "nan.tif")


def test_pil_decompression_bomb_limit_is_left_as_pil_sets_it():
    assert Image.MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3


@pytest.mark.parametrize("size, pixels", [((12, 10), 120), ((20, 20), 400)])  # PIL: warning, error
def test_images_over_the_pixel_limit_are_one_clear_error(tmp_path, monkeypatch, size, pixels):
    Image.new("RGB", size).save(tmp_path / "big.png")
    Image.new("RGB", (10, 10)).save(tmp_path / "fine.png")
    tar = write_plain_tar(tmp_path / "s.tar", [("k/big.png", (tmp_path / "big.png").read_bytes())])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    expected = rf"is too large: {pixels} pixels, over the limit of 100 pixels \(PIL.Image.MAX_IMAGE_PIXELS"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning escapes either
        assert load_image(tmp_path / "fine.png").size == (10, 10)  # at the limit: read
        with pytest.raises(DsmdError, match=rf"image .*big.png {expected}") as info:
            load_image(tmp_path / "big.png")
        assert "Downscale the image or remove it from the dataset." in _one_line(info)
        with pytest.raises(DsmdError, match=rf"image k/big.png of .*s.tar {expected}"):
            load_image(tar_ref(tar, "k/big.png"))
        with pytest.raises(DsmdError, match=rf"image row 3 {expected}"):
            decode_image((tmp_path / "big.png").read_bytes(), "row 3")


def _save(img: Image.Image, path, **kwargs):
    img.save(path, **kwargs)
    return path


def test_every_kind_of_transparency_is_composited_on_white(tmp_path):
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    files = {
        "rgba": _save(Image.new("RGBA", (4, 4), (200, 0, 0, 0)), tmp_path / "rgba.png"),
        "la": _save(Image.new("LA", (4, 4), (30, 0)), tmp_path / "la.png"),
        "palette": _save(palette, tmp_path / "p.png", transparency=1),
        "rgb key": _save(Image.new("RGB", (4, 4), (200, 0, 0)), tmp_path / "rgb.png", transparency=(200, 0, 0)),
        "gray key": _save(Image.new("L", (4, 4), 30), tmp_path / "l.png", transparency=30),
    }
    for kind, path in files.items():
        assert load_image(path).getpixel((0, 0)) == (255, 255, 255), kind
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert load_image(_save(half, tmp_path / "half.png")).getpixel((0, 0)) == (127, 127, 127)
    for mode in ("PA", "La", "RGBa"):
        assert viewing.as_seen(Image.new(mode, (2, 2))).getpixel((0, 0)) == (255, 255, 255), mode
    assert np.array_equal(
        np.asarray(load_image(_save(make_image(3), tmp_path / "opaque.png"))), np.asarray(make_image(3))
    )


def test_docstrings_say_white_and_name_the_beit3_difference():
    for module in (images, transforms):
        text = " ".join(module.__doc__.split())
        assert "onto **white**" in text and "BEiT-3's own code drops the alpha channel" in text, module.__name__
    assert "composited onto white" in load_image.__doc__ and "BEiT-3" in load_image.__doc__
