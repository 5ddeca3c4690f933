"""Stored pixels as an image viewer shows them: 8-bit RGB, upright, in sRGB, on white.

:func:`as_seen` is the one step between PIL's decoded image and every model that sees it (a
teacher, the student, an encoder given paths or PIL images, the search page's thumbnails):

- **Frame**: the image as PIL opens it, which for an animated GIF, WebP or APNG is the first
  frame (an APNG whose default image is not part of the animation: that default image). A PIL
  image given directly is taken at its current frame.
- **Orientation**: the EXIF orientation tag (all 8 values) is applied, as
  :func:`PIL.ImageOps.exif_transpose` would, so a phone photo stored sideways is seen upright.
  PIL applies a TIFF's orientation itself while loading; it is not applied twice. An unreadable
  EXIF block counts as orientation 1 (a viewer shows the stored pixels).
- **Colour**: an embedded ICC profile (Display P3, Adobe RGB, a CMYK press profile, a grey
  profile...) is converted to sRGB with :mod:`PIL.ImageCms` (perceptual intent). A profile
  that maps every probe colour to within one level of itself is sRGB already and is not applied,
  so the many photos that embed sRGB decode exactly as without a profile. A profile that cannot
  be read or built, or that describes other colours than the image holds (an RGB profile on a
  grey image), is skipped: the image decodes as without it.
- **CMYK** without a profile: PIL's conversion, ``R = (255 - C) * (255 - K) / 255`` (G, B
  alike). CMYK JPEGs are read with Adobe's inverted convention, as PIL, Chrome and Firefox all do.
- **High bit depth** (:func:`_to_8bit`): 16-bit grayscale (modes ``I;16``, ``I;16L``,
  ``I;16B``, ``I;16N``, e.g. 16-bit PNG and TIFF) is scaled from 0..65535 to 0..255 (PIL's
  own conversion would clip every value above 255 to white). 32-bit integers (mode ``I``,
  which PIL uses for 16-bit PGM, scaled to 0..65535) and floats (mode ``F``) have no
  fixed white: the white level is the smallest of 1 (``F`` only), 255 and 65535 that holds
  all of the image's values, black is 0; values outside 0..65535 (or negative ones) are
  stretched linearly from the image's minimum to its maximum (a constant such image is
  black). NaN or infinite pixels are refused. 16-bit RGB(A) PNGs are reduced to 8 bits by
  PIL itself.
- **Transparency** (RGBA, LA, PA, RGBa, La, a palette or an RGB / L image with a transparent
  colour) is composited onto **white**, after the colour conversion.
- Palette, bilevel and grey images become RGB by PIL's conversion; so do CIELAB images (mode
  ``LAB``, e.g. a Lab TIFF), which PIL converts to sRGB with :mod:`PIL.ImageCms` itself.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
from PIL import ExifTags, Image

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
HIGH_BIT_MODES = SIXTEEN_BIT_MODES + ("I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# EXIF orientation -> the transposition that shows the image upright (ImageOps.exif_transpose's table)
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# an image mode -> the mode its colours are converted from: the colour space an ICC profile must describe
PROFILE_MODE = {
    "RGB": "RGB",
    "RGBA": "RGB",
    "RGBX": "RGB",
    "RGBa": "RGB",
    "P": "RGB",
    "PA": "RGB",
    "L": "L",
    "LA": "L",
    "La": "L",
    "1": "L",
    "CMYK": "CMYK",
}
# an ICC profile's colour space (header field) -> the image mode it describes
SPACE_MODE = {"RGB ": "RGB", "GRAY": "L", "CMYK": "CMYK"}
TRANSFORM_CACHE = 16  # profiles kept per process (a dataset holds few distinct ones)


def as_seen(img: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB, as a viewer shows it (module docstring); ``img`` is not changed.

    Raises:
        OSError: truncated or corrupt pixel data (from PIL).
        ValueError: NaN or infinite pixels in a mode ``F`` image.
    """
    img.load()
    orientation = _orientation(img)
    icc = img.info.get("icc_profile")
    if img.mode in HIGH_BIT_MODES:
        img = _to_8bit(img)
    managed = _to_srgb(img, icc) if isinstance(icc, bytes) and icc else None
    return _upright(_on_white(img if managed is None else managed), orientation)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation, 1..8 (1: stored upright; also for a missing or unreadable tag)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about each corrupt EXIF field
            value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError, IndexError):
        return 1
    return value if isinstance(value, int) and value in UPRIGHT else 1


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    method = UPRIGHT.get(orientation)
    return img if method is None else img.transpose(method)


def _white_level(values: np.ndarray, mode: str) -> tuple[float, float]:
    """``(black, white)``: the values shown as 0 and 255 for a mode ``I`` or ``F`` image.

    Raises:
        ValueError: NaN or infinite pixels.
    """
    if values.size == 0:
        return 0.0, 255.0
    if not np.isfinite(values).all():
        raise ValueError(f"mode {mode} image has NaN or infinite pixels")
    low, high = float(values.min()), float(values.max())
    if low >= 0:
        for white in ((1.0,) if mode == "F" else ()) + (255.0, 65535.0):
            if high <= white:
                return 0.0, white
    return low, max(high, low + 1.0)


def _to_8bit(img: Image.Image) -> Image.Image:
    """An 8-bit ``L`` copy of a 16-bit, ``I`` or ``F`` grayscale image (``LA`` when it has a
    transparent value); the scaling is described in the module's docstring."""
    values = np.array(img, dtype=np.float32)  # (a copy, scaled in place below)
    transparent = img.info.get("transparency")
    alpha = None
    if isinstance(transparent, int):
        alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8))
    if img.mode in SIXTEEN_BIT_MODES:
        black, white = 0.0, 65535.0
    else:
        black, white = _white_level(values, img.mode)
    values -= black
    values *= 255.0 / (white - black)
    gray = Image.fromarray(np.clip(np.rint(values, out=values), 0, 255, out=values).astype(np.uint8))
    return gray if alpha is None else Image.merge("LA", (gray, alpha))


def _on_white(img: Image.Image) -> Image.Image:
    """8-bit RGB, transparency composited onto white."""
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = (img.convert("LA") if img.mode == "La" else img).convert("RGBA")  # (PIL: no La -> RGBA)
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")


def _to_srgb(img: Image.Image, icc: bytes) -> Image.Image | None:
    """``img``'s colours converted from the ICC profile ``icc`` to sRGB: ``RGB``, or ``RGBA`` keeping
    its transparency; None when the profile is not applied (module docstring)."""
    mode = PROFILE_MODE.get(img.mode)
    transform = None if mode is None else _transform_to_srgb(icc, mode)
    if transform is None:
        return None
    from PIL import ImageCms

    alpha = None
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        alpha = img.convert("RGBA" if mode == "RGB" else "LA").getchannel("A")
    try:
        out = ImageCms.applyTransform(img if img.mode == mode else img.convert(mode), transform)
    except (OSError, ValueError, ImageCms.PyCMSError):
        return None
    if alpha is not None:
        out.putalpha(alpha)
    return out


@functools.lru_cache(maxsize=TRANSFORM_CACHE)
def _transform_to_srgb(icc: bytes, mode: str):
    """An ``ImageCms`` transform from the profile ``icc`` (images of ``mode``) to sRGB ``RGB``; None
    for a profile that is broken, describes other colours than ``mode``'s, or is sRGB already."""
    try:
        from PIL import ImageCms
    except ImportError:  # (a Pillow built without littlecms2: colours as stored)
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if SPACE_MODE.get(profile.profile.xcolor_space) != mode:
            return None
        srgb = ImageCms.createProfile("sRGB")
        # (no one-pixel cache: a cached transform may be applied by several threads, e.g. the search server's)
        transform = ImageCms.buildTransform(
            profile, srgb, mode, "RGB", ImageCms.Intent.PERCEPTUAL, flags=ImageCms.Flags.NOCACHE
        )
        if mode in ("RGB", "L") and _keeps_colours(transform, mode):
            return None
        return transform
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError):
        return None


def _keeps_colours(transform, mode: str) -> bool:
    """Whether ``transform`` moves no probe colour by more than one level: the profile is sRGB."""
    from PIL import ImageCms

    probe = _probe(mode)
    out = np.asarray(ImageCms.applyTransform(probe, transform), dtype=np.int16)
    return int(np.abs(out - np.asarray(probe.convert("RGB"), dtype=np.int16)).max()) <= 1


@functools.cache
def _probe(mode: str) -> Image.Image:
    """Probe colours in one row: every grey level, every level of each primary, and a grid of
    ``RGB`` colours (``mode`` ``RGB``), or every grey level (``L``)."""
    ramp = np.arange(256, dtype=np.uint8)
    if mode == "L":
        return Image.fromarray(ramp[None])
    levels = np.unique(np.r_[np.arange(0, 256, 15), [1, 2, 4, 8, 250, 254]]).astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    ramps = np.zeros((4, 256, 3), np.uint8)
    ramps[0] = ramp[:, None]
    for channel in range(3):
        ramps[channel + 1, :, channel] = ramp
    return Image.fromarray(np.concatenate([grid, ramps.reshape(-1, 3)])[None])
