"""A catalogue of image kinds, each made here from one upright picture, decoded as a person sees it.

Every kind (EXIF orientations, CMYK, palettes, greys, 16 bits, ICC profiles, animations) is
written from :func:`picture` and must decode to it, or to its grey twin, both from the file
(:func:`load_image`) and from a PIL image (:func:`to_rgb`), and give the same student features.

Tolerances (mean absolute difference per channel, in levels of 0..255; 0 means identical):

- lossless kinds (PNG, WebP lossless, TIFF, GIF, palettes: the picture has 227 colours), an sRGB
  profile, a broken profile, an RGB profile on a grey image: 0;
- JPEG at quality 95 without chroma subsampling: 2.0 (measured 1.3 at the picture's hard edges,
  0.3 for the CMYK JPEG); a wrong orientation is 67 to 112 levels away;
- ICC-profiled pixels (Adobe RGB primaries, grey gamma 1.8; quantised to 8 bits in the profile's
  space): 1.0 (measured 0.14 and 0.02, whereas the stored values are 8.6 and 14.5 levels away);
  as a JPEG, 3.0 (measured 1.65);
- CIELAB TIFF: 1.5 (8-bit Lab quantisation, measured 0.8).

Features: a tiny trained student, whose features vary little; ``1 - cosine`` to the twin's feature
is at most 2.4e-6 for every kind (by path and by PIL image), whereas the orientation-6 file's
stored, sideways pixels give 5.7e-3. The bound, cosine >= 0.999, lies between the two.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageDraw, ImageOps

import dsmd
from dsmd.data.images import load_image, to_rgb
from dsmd.errors import DsmdError
from students import train_tiny

W, H = 96, 64
WHITE_BOX = (72, 6, 92, 24)  # x0, y0, x1, y1: white in the picture, transparent in the transparent kinds
JPEG = dict(quality=95, subsampling=0)
LOSSY, PROFILED, CIELAB = 2.0, 1.0, 1.5
FEATURE_COSINE = 0.999
# what was done to the upright picture to store it under each EXIF orientation (the inverse of
# what a viewer does to show it; from the EXIF specification, checked against ImageOps below)
STORED_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
# Adobe RGB (1998): D50-adapted colorants, gamma 563/256
ADOBE_RGB = {"r": (0.60974, 0.31111, 0.01947), "g": (0.20528, 0.62567, 0.06087), "b": (0.14919, 0.06322, 0.74457)}
D50 = (0.9642, 1.0, 0.8249)


def picture() -> Image.Image:
    """The upright picture: red rises left to right, green top to bottom, blue falls with both
    (15 steps each: 225 colours), a black bar along the top and down the left, a white box at the
    top right. Every flip and turn shows; 227 colours fit a palette exactly."""
    x = np.arange(W) * 15 // W
    y = np.arange(H) * 15 // H
    red, green = np.meshgrid(20 + 15 * x, 20 + 15 * y)
    rgb = np.stack([red, green, 255 - (red + green) // 2], axis=-1).astype(np.uint8)
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    draw.rectangle((8, 6, 56, 12), fill=(0, 0, 0))
    draw.rectangle((8, 6, 14, 50), fill=(0, 0, 0))
    draw.rectangle(WHITE_BOX, fill=(255, 255, 255))
    return img


def grey_twin() -> Image.Image:
    return picture().convert("L").convert("RGB")


def _palette(img: Image.Image) -> Image.Image:
    """``img`` (RGB or RGBA) as a palette image holding its colours exactly (it has at most 256),
    its one fully transparent colour, if any, as the palette's transparent entry."""
    colours, index = np.unique(np.asarray(img.convert("RGBA")).reshape(-1, 4), axis=0, return_inverse=True)
    assert len(colours) <= 256
    pal = Image.fromarray(index.reshape(img.height, img.width).astype(np.uint8), "P")
    pal.putpalette(colours[:, :3].astype(np.uint8).tobytes())
    transparent = np.flatnonzero(colours[:, 3] == 0)
    if transparent.size:
        pal.info["transparency"] = int(transparent[0])
    return pal


def _hidden_box(img: Image.Image) -> Image.Image:
    """RGBA: ``img`` with the white box transparent, storing magenta there."""
    rgba = img.convert("RGBA")
    ImageDraw.Draw(rgba).rectangle(WHITE_BOX, fill=(255, 0, 255, 0))
    return rgba


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _profile(space: bytes, tags: dict[bytes, bytes]) -> bytes:
    """A version 2 ICC display profile of colour space ``space`` (``b"RGB "``, ``b"GRAY"``)."""
    table, data, start = b"", b"", 128 + 4 + 12 * len(tags)
    for signature, body in tags.items():
        table += signature + struct.pack(">II", start + len(data), len(body))
        data += body + b"\0" * (-len(body) % 4)
    header = (
        struct.pack(">I4sI", start + len(data), b"", 0x02100000)
        + b"mntr"
        + space
        + b"XYZ "
        + bytes(12)
        + b"acsp"
        + bytes(28)
        + _xyz(D50)
        + bytes(48)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def _xyz(values) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def _tags(description: str, **curves_and_colorants) -> dict[bytes, bytes]:
    text = description.encode() + b"\0"
    tags = {
        b"desc": b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(8) + bytes(3) + bytes(67),
        b"wtpt": b"XYZ " + bytes(4) + _xyz(D50),
    }
    for name, value in curves_and_colorants.items():
        if name.endswith("TRC"):
            tags[name.encode()] = b"curv" + bytes(4) + struct.pack(">IH", 1, round(value * 256))
        else:
            tags[name.encode()] = b"XYZ " + bytes(4) + _xyz(value)
    return tags


def adobe_rgb_profile() -> bytes:
    colorants = {f"{c}XYZ": ADOBE_RGB[c] for c in "rgb"}
    return _profile(b"RGB ", _tags("Adobe RGB (1998) primaries", **colorants, rTRC=2.2, gTRC=2.2, bTRC=2.2))


def grey_gamma_profile(gamma: float) -> bytes:
    return _profile(b"GRAY", _tags(f"grey, gamma {gamma}", kTRC=gamma))


def _into_profile(img: Image.Image, icc: bytes, mode: str) -> Image.Image:
    """``img``'s sRGB colours stored in the profile's space."""
    srgb = ImageCms.createProfile("sRGB")
    target = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.applyTransform(img, ImageCms.buildTransform(srgb, target, "RGB", mode))


def _png_rgb16(img: Image.Image) -> bytes:
    """A 16-bit RGB PNG of ``img`` (values times 257), which PIL cannot write."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (np.asarray(img).astype(">u2") * 257).reshape(img.height, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", img.width, img.height, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _other_frame() -> Image.Image:
    return Image.new("RGB", (W, H), (200, 30, 30))


def write_catalogue(root: Path) -> dict[str, tuple[Path, str, float]]:
    """``kind -> (file, twin, tolerance)``: ``twin`` is ``"colour"`` (:func:`picture`) or ``"grey"``."""
    pic, grey = picture(), picture().convert("L")
    adobe, gamma = adobe_rgb_profile(), grey_gamma_profile(1.8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    kinds = {
        "png": (_save(pic, root / "plain.png"), "colour", 0),
        "jpeg": (_save(pic, root / "plain.jpg", **JPEG), "colour", LOSSY),
        "png exif 6": (_save(pic.transpose(STORED_AS[6]), root / "o6.png", exif=_exif(6)), "colour", 0),
        "webp exif 8": (
            _save(pic.transpose(STORED_AS[8]), root / "o8.webp", exif=_exif(8), lossless=True),
            "colour",
            0,
        ),
        "tiff orientation 5": (
            _save(pic.transpose(STORED_AS[5]), root / "o5.tif", tiffinfo={0x0112: 5}),
            "colour",
            0,
        ),
        "cmyk jpeg": (_save(pic.convert("CMYK"), root / "cmyk.jpg", **JPEG), "colour", LOSSY),
        "palette png": (_save(_palette(pic), root / "p.png"), "colour", 0),
        "palette png, transparent": (_save(_palette(_hidden_box(pic)), root / "pt.png"), "colour", 0),
        "rgba png": (_save(_hidden_box(pic), root / "rgba.png"), "colour", 0),
        "16-bit rgb png": (root / "rgb16.png", "colour", 0),
        "grey png": (_save(grey, root / "l.png"), "grey", 0),
        "grey + alpha png": (_save(_hidden_box(grey.convert("RGB")).convert("LA"), root / "la.png"), "grey", 0),
        "16-bit grey png": (
            _save(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), root / "l16.png"),
            "grey",
            0,
        ),
        "32-bit int grey tiff": (_save(Image.fromarray(np.asarray(grey).astype(np.int32)), root / "i.tif"), "grey", 0),
        "float grey tiff": (
            _save(Image.fromarray(np.asarray(grey).astype(np.float32) / 255), root / "f.tif"),
            "grey",
            0,
        ),
        "adobe rgb png": (
            _save(_into_profile(pic, adobe, "RGB"), root / "adobe.png", icc_profile=adobe),
            "colour",
            PROFILED,
        ),
        "adobe rgb jpeg, exif 6": (
            _save(
                _into_profile(pic, adobe, "RGB").transpose(STORED_AS[6]),
                root / "adobe6.jpg",
                icc_profile=adobe,
                exif=_exif(6),
                **JPEG,
            ),
            "colour",
            LOSSY + PROFILED,
        ),
        "grey gamma 1.8 png": (
            _save(_into_profile(grey.convert("RGB"), gamma, "L"), root / "gamma.png", icc_profile=gamma),
            "grey",
            PROFILED,
        ),
        "cielab tiff": (_save(pic.convert("LAB"), root / "lab.tif"), "colour", CIELAB),
        "srgb profile png": (_save(pic, root / "srgb.png", icc_profile=srgb), "colour", 0),
        "broken profile png": (_save(pic, root / "broken.png", icc_profile=adobe[:200]), "colour", 0),
        "rgb profile on grey png": (_save(grey, root / "mismatch.png", icc_profile=adobe), "grey", 0),
        "animated gif": (
            _save(_palette(pic), root / "anim.gif", save_all=True, append_images=[_other_frame()], duration=50),
            "colour",
            0,
        ),
        "animated webp": (
            _save(pic, root / "anim.webp", save_all=True, append_images=[_other_frame()], lossless=True),
            "colour",
            0,
        ),
        "apng": (_save(pic, root / "anim.png", save_all=True, append_images=[_other_frame()]), "colour", 0),
    }
    for orientation, stored in STORED_AS.items():
        path = _save(pic.transpose(stored), root / f"o{orientation}.jpg", exif=_exif(orientation), **JPEG)
        kinds[f"jpeg exif {orientation}"] = (path, "colour", LOSSY)
    (root / "rgb16.png").write_bytes(_png_rgb16(pic))
    return kinds


def _twin(name: str) -> np.ndarray:
    return np.asarray(picture() if name == "colour" else grey_twin())


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> dict[str, tuple[Path, str, float]]:
    return write_catalogue(tmp_path_factory.mktemp("catalogue"))


def test_the_catalogue_is_what_it_claims(catalogue):
    """The files themselves: PIL's own reading shows they hold the kinds named, so the test is fair."""
    for orientation in STORED_AS:
        with Image.open(catalogue[f"jpeg exif {orientation}"][0]) as img:
            upright = np.asarray(ImageOps.exif_transpose(img), dtype=int)
            assert np.abs(upright - _twin("colour")).mean() < LOSSY, orientation
            if img.size == (W, H):  # (turned by 90 degrees, the stored picture's shape shows it)
                assert np.abs(np.asarray(img.convert("RGB"), dtype=int) - _twin("colour")).mean() > 40, orientation
    modes = {"cmyk jpeg": "CMYK", "palette png": "P", "grey + alpha png": "LA", "16-bit grey png": "I;16"}
    modes |= {"32-bit int grey tiff": "I", "float grey tiff": "F", "cielab tiff": "LAB", "16-bit rgb png": "RGB"}
    for kind, mode in modes.items():
        assert Image.open(catalogue[kind][0]).mode == mode, kind
    assert Image.open(catalogue["cmyk jpeg"][0]).info.get("adobe") is not None  # Adobe's inverted CMYK
    assert "transparency" in Image.open(catalogue["palette png, transparent"][0]).info
    for kind in ("animated gif", "animated webp", "apng"):
        assert Image.open(catalogue[kind][0]).n_frames == 2, kind
    stored = np.asarray(Image.open(catalogue["adobe rgb png"][0]).convert("RGB"), dtype=int)
    assert np.abs(stored - _twin("colour")).mean() > 5  # the profiles matter
    stored = np.asarray(Image.open(catalogue["grey gamma 1.8 png"][0]).convert("RGB"), dtype=int)
    assert np.abs(stored - _twin("grey")).mean() > 10


@pytest.mark.parametrize("source", ["path", "pil"])
def test_every_kind_decodes_to_its_upright_twin(catalogue, source):
    for kind, (path, twin, tolerance) in catalogue.items():
        img = load_image(path) if source == "path" else to_rgb(Image.open(path))
        assert img.mode == "RGB" and img.size == (W, H), kind
        error = np.abs(np.asarray(img, dtype=int) - _twin(twin)).mean()
        assert error <= tolerance, f"{kind}: {error:.2f} > {tolerance}"
        if tolerance == 0:
            assert np.array_equal(np.asarray(img), _twin(twin)), kind


def test_a_pil_image_is_not_changed_and_is_taken_at_its_frame(catalogue):
    img = Image.open(catalogue["jpeg exif 6"][0])
    assert to_rgb(img).size == (W, H) and img.size == (H, W) and img.getexif()[0x0112] == 6
    anim = Image.open(catalogue["animated webp"][0])
    anim.seek(1)
    assert to_rgb(anim).getpixel((0, 0)) == (200, 30, 30)


def _truncated_and_corrupt(root: Path) -> dict[str, Path]:
    png, jpeg = io.BytesIO(), io.BytesIO()
    picture().save(png, "PNG")
    picture().save(jpeg, "JPEG", **JPEG)
    files = {"truncated.png": png.getvalue()[: len(png.getvalue()) // 2]}
    files["truncated.jpg"] = jpeg.getvalue()[: len(jpeg.getvalue()) // 2]
    corrupt = bytearray(png.getvalue())
    corrupt[60:80] = bytes(20)  # inside the first IDAT chunk: its checksum fails
    files["corrupt.png"] = bytes(corrupt)
    files["not-an-image.jpg"] = b"<html>not found</html>"
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {name: root / name for name in files}


def test_truncated_and_corrupt_files_are_refused_by_name(tmp_path):
    for name, path in _truncated_and_corrupt(tmp_path).items():
        with pytest.raises(DsmdError, match=rf"cannot read image .*{name}: .*Replace or remove it") as info:
            load_image(path)
        assert "\n" not in str(info.value)
        if name != "not-an-image.jpg":  # (PIL cannot open that one at all)
            with pytest.raises(DsmdError, match=rf"cannot read image .*{name}: "):
                to_rgb(Image.open(path))


@pytest.fixture(scope="module")
def student(tiny_models, synthetic_manifest, tmp_path_factory):
    run = train_tiny(tiny_models, synthetic_manifest, tmp_path_factory.mktemp("catalogue_student"))
    return dsmd.load_student(run["checkpoint"])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_student_sees_every_kind_as_its_twin(catalogue, student, tmp_path):
    kinds = list(catalogue)
    twins = student.encode_images([Image.fromarray(_twin(name)) for name in ("colour", "grey")])
    expected = np.stack([twins[0] if catalogue[k][1] == "colour" else twins[1] for k in kinds])
    by_path = student.encode_images([catalogue[k][0] for k in kinds])
    by_pil = student.encode_images([Image.open(catalogue[k][0]) for k in kinds])
    for features in (by_path, by_pil):
        cosines = dict(zip(kinds, _cosines(features, expected), strict=True))
        assert min(cosines.values()) >= FEATURE_COSINE, cosines
    sideways = Image.open(catalogue["png exif 6"][0]).convert("RGB")
    sideways.info.pop("exif", None)  # the stored pixels, as they decoded before
    assert _cosines(student.encode_images([sideways]), twins[:1])[0] < FEATURE_COSINE
    bad = _truncated_and_corrupt(tmp_path)
    _, ok, failed = student.encode_image_files([str(catalogue["png"][0]), *map(str, bad.values())])
    assert ok == [0] and [line.split("\t")[0] for line in failed] == list(map(str, bad.values()))
