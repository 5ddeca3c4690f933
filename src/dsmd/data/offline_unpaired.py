"""Pools of unpaired data beside the offline benchmark (``dsmd build-benchmark --unpaired``):
images without captions and captions without images, from what the benchmark does not use.

- **images** (``OUT/unpaired/images.jsonl``): the Open Clip Art drawings the benchmark left out
  (their titles were dropped by its filters, repeated, or their folder is ``shapes/`` or
  ``special/``), and the emoji it left out (skin-tone variants, flags, keycaps, tag sequences,
  emoji whose name another source had), drawn as the benchmark draws them into
  ``OUT/unpaired/emoji/``;
- **captions** (``OUT/unpaired/captions.jsonl``): the names of the emoji left out (also those the
  font cannot draw: captions with no image at all; flags as "flag of NAME") and the titles of the
  drawings left out, lightly cleaned (1-12 words, no collection labels or file names).

Nothing of the benchmark or of Tux Paint enters a pool. The demo and the benchmark test on
Tux Paint's stamps, and most of its SVG stamps are Open Clip Art drawings under another name and
in another format (an SVG stamp is a PNG drawing here), so every pool image is compared with
every stamp (PNG, and SVG rendered by ``rsvg-convert``) and with every benchmark image: by path,
by bytes, and by a perceptual hash (:func:`dhash`, the image's content cropped and reduced to 16
x 16 brightness gradients); an image within :data:`NEAR` bits of a stamp, or of a val or test
image of the benchmark, is left out, as are skin-tone variants of val and test emoji. As the hash
can miss a redrawn copy, a drawing whose file name has all the words of an SVG stamp's file name
(``woman_doctor_gerald_g._01`` and ``woman_doctor``), or whose title is an SVG stamp's title, is
left out too (conservatively: every drawing with "apple" in its name goes with the apple stamp).
A caption that is a benchmark caption, a line of a stamp's description or an SVG stamp's title
(compared lower-cased, letters and digits only) is left out. ``OUT/unpaired/README.md`` gives the
counts and the config keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

from dsmd.data import offline_benchmark as ob
from dsmd.errors import DsmdError
from dsmd.runtime.files import write_text_atomic

# Of the 256 bits of dhash: the drawings several stamps were made from differ from them by 0-28
# bits (most by under 12), most unrelated drawings by over 40; simple shapes come closer.
NEAR = 32
SKIN_TONES = range(0x1F3FB, 0x1F400)
_VARIATION = "\ufe0f"


def dhash(img: Image.Image) -> np.ndarray | None:
    """256 bits ``(256,)`` bool: is each pixel brighter than its left neighbour, in the image's
    content (the box of pixels darker than near-white, on white) resized to 17 x 16; None for an
    image with no content."""
    img = img.convert("RGBA")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    white.alpha_composite(img)
    gray = white.convert("L")
    box = Image.eval(gray, lambda v: 255 if v < 250 else 0).getbbox()
    if box is None:
        return None
    pixels = np.asarray(gray.crop(box).resize((17, 16), Image.Resampling.BILINEAR), dtype=np.int16)
    return (pixels[:, 1:] > pixels[:, :-1]).reshape(-1)


def _file_hash(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as img:
            img.thumbnail((256, 256))
            return dhash(img)
    except (OSError, Image.DecompressionBombError, ValueError):
        return None


def _svg_hash(svg: Path) -> np.ndarray | None:
    done = subprocess.run(["rsvg-convert", "-w", "128", str(svg)], capture_output=True, timeout=120)
    if done.returncode != 0 or not done.stdout:
        return None
    return dhash(Image.open(io.BytesIO(done.stdout)))


@dataclass
class Stamps:
    """What identifies a Tux Paint stamp (:func:`stamp_fingerprints`).

    Attributes:
        hashes: ``(S, 256)`` bool, the :func:`dhash` of every stamp image (PNG, and SVG rendered).
        digests: the sha256 of every stamp image file.
        lines: the :func:`caption_key` of every line of every stamp description (every language).
        names: the word sets of the SVG stamps' file names (``lighthouse``, ``woman doctor``): a
            drawing whose file name has all the words of one is left out.
        titles: the keys of the SVG stamps' titles: a drawing with the same title is left out.
    """

    hashes: np.ndarray
    digests: set[str]
    lines: set[str]
    names: set[frozenset[str]]
    titles: set[str]


def name_words(name: str) -> frozenset[str]:
    """The words of three letters or more of a file name (``woman_doctor_01`` -> {woman, doctor})."""
    return frozenset(w for w in re.findall(r"[a-z]+", name.lower()) if len(w) >= 3)


def stamp_fingerprints() -> Stamps:
    """Every Tux Paint stamp's images, files, descriptions and, for the SVG stamps (most are Open
    Clip Art drawings), names and titles.

    Raises:
        DsmdError: the stamps, or ``rsvg-convert`` (Debian ``librsvg2-bin``), are missing.
    """
    if not ob.STAMPS.is_dir():
        raise ob._missing(ob.STAMPS)
    if shutil.which("rsvg-convert") is None:
        raise DsmdError(
            "dsmd build-benchmark --unpaired renders Tux Paint's SVG stamps to keep them out of the pools: it "
            "needs rsvg-convert (apt-get install -y librsvg2-bin)."
        )
    stamps = Stamps(np.zeros((0, 256), dtype=bool), set(), set(), set(), set())
    hashes = []
    for path in sorted(p for p in ob.STAMPS.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if suffix in (".png", ".svg"):
            stamps.digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
            hashes.append(_svg_hash(path) if suffix == ".svg" else _file_hash(path))
        if suffix == ".svg":
            stamps.names.add(name_words(path.stem))
            stamps.titles.add(caption_key(ob._svg_title(path) or ""))
        elif suffix == ".txt":
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                stamps.lines.add(caption_key(re.sub(r"^[a-zA-Z_]+(\.utf8)?=", "", line)))
    stamps.hashes = np.array([h for h in hashes if h is not None], dtype=bool).reshape(-1, 256)
    stamps.lines.discard("")
    stamps.titles.discard("")
    stamps.names.discard(frozenset())
    return stamps


def caption_key(caption: str) -> str:
    """How captions are compared: lower-cased, letters and digits only (the benchmark's rule)."""
    return " ".join(re.findall(r"[a-z0-9]+", caption.lower()))


def nearest_distance(hashes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each row of ``hashes (P, 256)``, the fewest bits in which it differs from a row of
    ``reference (R, 256)`` (257 when ``reference`` is empty)."""
    if len(reference) == 0 or len(hashes) == 0:
        return np.full(len(hashes), 257)
    a, b = hashes.astype(np.float32), reference.astype(np.float32)
    # |a xor b| = |a| + |b| - 2 a.b for 0/1 vectors
    distance = a.sum(1)[:, None] + b.sum(1)[None, :] - 2 * (a @ b.T)
    return np.rint(distance.min(axis=1)).astype(int)


def _plain(char: str) -> str:
    return "".join(c for c in char if c != _VARIATION and ord(c) not in SKIN_TONES)


def _emoji_caption(char: str, name: str) -> str:
    name = name.strip(":").replace("_", " ").strip()
    if any(0x1F1E6 <= ord(c) <= 0x1F1FF or 0xE0020 <= ord(c) <= 0xE007F for c in char):
        return f"flag of {name.removeprefix('flag').strip(': ')}"
    return name


def emoji_candidates(benchmark: list[dict]) -> list[dict]:
    """The fully qualified emoji the benchmark does not hold: ``{"char", "caption", "held"}``,
    ``held`` true for a skin-tone variant of a val or test emoji of the benchmark."""
    import emoji

    used, held = set(), set()
    for item in benchmark:
        if item["source"] == "emoji":
            char = "".join(chr(int(h, 16)) for h in Path(item["image"]).stem.split("-"))
            used.add(char)
            if item["split"] in ("val", "test"):
                held.add(_plain(char))
    out = []
    for char, info in emoji.EMOJI_DATA.items():
        if info.get("status") != emoji.STATUS["fully_qualified"] or char in used:
            continue
        out.append({"char": char, "caption": _emoji_caption(char, info["en"]), "held": _plain(char) in held})
    return out


def _loose_title(title: str | None) -> str | None:
    """A drawing's title as a caption: 1-12 words, parentheses, file names and labels left out."""
    if not title or ob._NOISE.search(title):
        return None
    words = re.sub(r"\([^)]*\)|[_/|]+", " ", title).split()
    if not 1 <= len(words) <= 12 or not any(re.search(r"[A-Za-z]{2}", w) for w in words):
        return None
    return " ".join(words).lower()


def clipart_candidates(benchmark: list[dict]) -> list[dict]:
    """The drawings the benchmark does not hold (usable sizes): ``{"image", "caption", "title"}``,
    the caption its loosely cleaned title or None, the title's :func:`caption_key`."""
    png_root, svg_root = ob.OPENCLIPART / "png", ob.OPENCLIPART / "svg"
    for path in (png_root, svg_root):
        if not path.is_dir():
            raise ob._missing(path)
    used = {str(Path(item["image"]).resolve()) for item in benchmark if item["source"] == "clipart"}
    out = []
    for png in sorted(png_root.rglob("*.png")):
        if str(png.resolve()) in used or not ob._usable_size(png):
            continue
        title = ob._svg_title((svg_root / png.relative_to(png_root)).with_suffix(".svg"))
        out.append({"image": str(png), "caption": _loose_title(title), "title": caption_key(title or "")})
    return out


def _absolute(out: Path, image: str) -> Path:
    path = Path(image)
    return path if path.is_absolute() else out / path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _named_like_a_stamp(drawing: dict, stamps: Stamps) -> bool:
    words = name_words(Path(drawing["image"]).stem)
    return drawing["title"] in stamps.titles or any(name <= words for name in stamps.names)


def _image_candidates(out: Path, clipart: list[dict], emoji: list[dict], stamps: Stamps) -> list[dict]:
    """Clip art not named like an SVG stamp, then the emoji the font draws (into
    ``OUT/unpaired/emoji/``): ``{"image", "source", "path"}``."""
    found = [
        {"image": c["image"], "source": "clipart", "path": Path(c["image"])}
        for c in clipart
        if not _named_like_a_stamp(c, stamps)
    ]
    if not ob.EMOJI_FONT.is_file():
        raise ob._missing(ob.EMOJI_FONT)
    font = ImageFont.truetype(str(ob.EMOJI_FONT), 109)
    folder = out / "unpaired" / "emoji"
    folder.mkdir(parents=True, exist_ok=True)
    for e in emoji:
        if e["held"]:
            continue
        path = folder / ("-".join(f"{ord(c):04x}" for c in e["char"]) + ".png")
        if not path.is_file():
            img = ob._draw_emoji(e["char"], font)
            if img is None:
                continue  # no single glyph: its name is a caption without an image
            img.save(path)
        found.append({"image": str(path.relative_to(out / "unpaired")), "source": "emoji", "path": path})
    return found


def _pool_images(out: Path, benchmark: list[dict], candidates: list[dict], stamps: Stamps) -> list[dict]:
    """The candidates that are neither a benchmark image nor a Tux Paint stamp, nor near a stamp or
    a val or test image of the benchmark (see the module docstring)."""
    paths = [_absolute(out, item["image"]) for item in benchmark]
    taken_paths = {str(p.resolve()) for p in paths}
    taken_bytes = {_sha256(p) for p in paths} | stamps.digests
    held = [_file_hash(p) for p, item in zip(paths, benchmark, strict=True) if item["split"] in ("val", "test")]
    held = np.array([h for h in held if h is not None], dtype=bool).reshape(-1, 256)
    kept, hashes = [], []
    for c in candidates:
        where = c["path"].resolve()
        if str(where) in taken_paths or ob.STAMPS in where.parents or _sha256(c["path"]) in taken_bytes:
            continue
        h = _file_hash(c["path"])
        if h is not None:
            kept.append(c)
            hashes.append(h)
    hashes = np.array(hashes, dtype=bool).reshape(-1, 256)
    far = (nearest_distance(hashes, stamps.hashes) > NEAR) & (nearest_distance(hashes, held) > NEAR)
    return [c for c, ok in zip(kept, far, strict=True) if ok]


def _pool_captions(benchmark: list[dict], emoji: list[dict], clipart: list[dict], stamps: Stamps) -> list[dict]:
    taken = {caption_key(item["caption"]) for item in benchmark} | stamps.lines | stamps.titles
    found = [{"caption": e["caption"], "source": "emoji"} for e in emoji if not e["held"]]
    found += [{"caption": c["caption"], "source": "clipart"} for c in clipart if c["caption"]]
    kept = []
    for item in found:
        key = caption_key(item["caption"])
        if key and key not in taken:
            taken.add(key)
            kept.append(item)
    return kept


def build_unpaired_pools(out: str | Path, benchmark: list[dict], log=print) -> dict[str, dict[str, int]]:
    """Write ``OUT/unpaired/`` (see the module docstring) for the benchmark's items.

    Args:
        benchmark: the benchmark's items, each with ``image``, ``caption``, ``source`` and ``split``.

    Returns:
        ``{"images": {source: count}, "captions": {source: count}}``.

    Raises:
        DsmdError: a Debian package, the ``emoji`` package or ``rsvg-convert`` is missing.
    """
    out = Path(out)
    stamps = stamp_fingerprints()
    emoji, clipart = emoji_candidates(benchmark), clipart_candidates(benchmark)
    images = _pool_images(out, benchmark, _image_candidates(out, clipart, emoji, stamps), stamps)
    captions = _pool_captions(benchmark, emoji, clipart, stamps)
    folder = out / "unpaired"
    listed = {i["path"] for i in images}
    for drawn in (folder / "emoji").glob("*.png"):  # emoji drawn and then left out (or by an earlier build)
        if drawn not in listed:
            drawn.unlink()
    lines = [json.dumps({"image": i["image"], "source": i["source"]}) + "\n" for i in images]
    write_text_atomic(folder / "images.jsonl", "".join(lines))
    write_text_atomic(folder / "captions.jsonl", "".join(json.dumps(c) + "\n" for c in captions))
    counts = {
        "images": {s: sum(i["source"] == s for i in images) for s in ("clipart", "emoji")},
        "captions": {s: sum(c["source"] == s for c in captions) for s in ("clipart", "emoji")},
    }
    write_text_atomic(folder / "README.md", _readme(counts))
    log(f"unpaired pools {folder}: {len(images)} images without captions, {len(captions)} captions without images")
    return counts


def _readme(counts: dict[str, dict[str, int]]) -> str:
    images, captions = counts["images"], counts["captions"]
    return f"""# Unpaired pools of the offline benchmark

Built by `dsmd build-benchmark --unpaired` ({__name__}) from what the benchmark does not use.

| pool | clip art | emoji | all |
|---|---|---|---|
| images without captions (`images.jsonl`) | {images["clipart"]} | {images["emoji"]} | {sum(images.values())} |
| captions without images (`captions.jsonl`) | {captions["clipart"]} | {captions["emoji"]} | {sum(captions.values())} |

- images: Open Clip Art drawings the benchmark left out (titles its filters dropped or repeated,
  folders `shapes/` and `special/`), and emoji it left out (skin-tone variants, flags, keycaps,
  tag sequences, repeated names) drawn like the benchmark's into `emoji/`.
- captions: the names of those emoji (flags as "flag of NAME"; also emoji the font cannot draw)
  and the drawings' titles (1-12 words, no collection labels or file names).
- left out: every benchmark image and every Tux Paint stamp (PNG and SVG), by path, bytes and a
  perceptual hash (within {NEAR} of 256 bits), and drawings named like an SVG stamp (all the words
  of its file name, or its title); images near a val or test image of the benchmark and skin-tone
  variants of val and test emoji; captions equal to a benchmark caption, a line of a stamp's
  description or an SVG stamp's title (lower-cased, letters and digits only).

Use them with:

```yaml
data:
  unpaired_images: {{kind: jsonl, path: benchmark_data/unpaired/images.jsonl}}
  unpaired_texts: {{kind: jsonl, path: benchmark_data/unpaired/captions.jsonl}}
loss:
  losses: [cd, fd, sd, hnd, u_cd, u_fd, u_sd, u_hnd]
```
"""
