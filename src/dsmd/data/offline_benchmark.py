"""The offline benchmark: about 3,300 captioned images built from Debian packages, deterministically.

Three sources, each a Debian package (nothing is downloaded at run time):

- **photo stamps** (``tuxpaint-stamps-default``, GPL-2.0): the demo's 430 captioned photo
  cut-outs, read in place;
- **emoji** (``fonts-noto-color-emoji``, OFL-1.1): every fully qualified emoji of the ``emoji``
  package's table that the Noto Color Emoji font draws (no skin-tone variants, no flags, no
  keycaps), drawn by Pillow onto white at 128 px; the caption is its CLDR name ("kangaroo",
  "woman astronaut");
- **clip art** (``openclipart-png`` with ``openclipart-svg`` for the titles, public domain): drawings
  outside ``shapes/`` and ``special/`` whose SVG title has two to eight words of plain English
  letters; titles that are collection labels, file names or repeated are left out.

Each caption is kept once over the three sources (the first image with it; compared lower-cased
without punctuation), so every caption has exactly one right image. Images are split by image
with a fixed seed, each source in proportion: ``test_images`` test
images (at least 1,000), ``val_images`` validation, the rest training. ``OUT/manifest.jsonl``
(``data.kind=manifest``; ``split`` given) and ``OUT/README.md`` (what it holds, the filters,
the licences and the counts) are written; emoji PNGs go to ``OUT/emoji/``.

Out-of-domain settings: for each source S, ``OUT/manifest_ood_S.jsonl`` (same line format) holds
"S held out": the train and val splits of the two other sources for training and validation, and
the test split of S alone for test. S's train and val images and the other sources' test images
are left out, so the test images come from a source the student never saw in training; the
images of each split are those of ``manifest.jsonl`` (:func:`ood_records`).

With ``unpaired``, ``OUT/unpaired/`` also gets pools of images without captions and captions
without images from what the benchmark does not use (:mod:`dsmd.data.offline_unpaired`).
"""

from __future__ import annotations

import json
import random
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dsmd.data.formats.tuxpaint import list_tuxpaint
from dsmd.errors import DsmdError
from dsmd.runtime.files import write_text_atomic
from dsmd.runtime.lock import exclusive_folder

STAMPS = Path("/usr/share/tuxpaint/stamps")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
OPENCLIPART = Path("/usr/share/openclipart")
SOURCES = ("stamps", "emoji", "clipart")
PACKAGES = "tuxpaint-stamps-default fonts-noto-color-emoji openclipart-png openclipart-svg"
EMOJI_SIDE = 128
MAX_PIXELS = 4096 * 4096
MIN_SIDE = 64
_TITLE = re.compile(r"[A-Za-z][A-Za-z']*")
_NOISE = re.compile(
    r"collection|untitled|clip ?arts?\b|openclipart|\bicons?\b|iconset|\bsvg\b|\bpng\b|\btheme\b|"
    r"\bby\b|\bversion\b|\btest\b",
    re.I,
)
_DC = "{http://purl.org/dc/elements/1.1/}"


def _missing(path: Path) -> DsmdError:
    return DsmdError(
        f"{path} not found: the offline benchmark needs the Debian packages {PACKAGES} "
        f"(bash scripts/setup.sh --benchmark installs them: apt-get install -y {PACKAGES})."
    )


def stamp_items() -> list[dict]:
    if not STAMPS.is_dir():
        raise _missing(STAMPS)
    return [
        {"image": path, "caption": caption, "source": "stamps"}
        for path, caption, _ in list_tuxpaint(STAMPS, ["symbols", "cartoon"])
    ]


def _emoji_table() -> dict[str, str]:
    """Emoji string -> CLDR name, fully qualified, without skin tones, flags or keycaps."""
    try:
        import emoji
    except ImportError as exc:
        raise DsmdError("the offline benchmark needs the emoji package: pip install emoji==2.16.0") from exc
    out = {}
    for char, info in emoji.EMOJI_DATA.items():
        if info.get("status") != emoji.STATUS["fully_qualified"]:
            continue
        if any(
            0x1F3FB <= ord(c) <= 0x1F3FF
            or 0x1F1E6 <= ord(c) <= 0x1F1FF
            or c == "\u20e3"
            or 0xE0020 <= ord(c) <= 0xE007F
            for c in char
        ):
            continue
        name = info["en"].strip(":").replace("_", " ").strip()
        if name and not name.lower().startswith("flag"):
            out[char] = name
    return out


def _draw_emoji(char: str, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    """The emoji on white at :data:`EMOJI_SIDE` px, or None when the font has no glyph for it."""
    canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((80, 80), char, font=font, embedded_color=True, anchor="mm")
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    if len(char) > 1 and glyph.width > 1.6 * glyph.height:  # drawn as separate glyphs: no ligature
        return None
    white = Image.new("RGBA", (136, 136), (255, 255, 255, 255))
    glyph.thumbnail((128, 128))
    white.alpha_composite(glyph, ((136 - glyph.width) // 2, (136 - glyph.height) // 2))
    return white.convert("RGB").resize((EMOJI_SIDE, EMOJI_SIDE), Image.Resampling.BICUBIC)


def emoji_items(out: Path) -> list[dict]:
    if not EMOJI_FONT.is_file():
        raise _missing(EMOJI_FONT)
    font = ImageFont.truetype(str(EMOJI_FONT), 109)
    folder = out / "emoji"
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for char, name in _emoji_table().items():
        path = folder / ("-".join(f"{ord(c):04x}" for c in char) + ".png")
        if not path.is_file():
            img = _draw_emoji(char, font)
            if img is None:
                continue
            img.save(path)
        # relative to the manifest, which resolves paths against its own folder
        items.append({"image": str(path.relative_to(out)), "caption": name, "source": "emoji"})
    return items


def _svg_title(svg: Path) -> str | None:
    try:
        root = ET.parse(svg).getroot()
    except (ET.ParseError, OSError, UnicodeDecodeError):
        return None
    for element in root.iter(f"{_DC}title"):
        text = " ".join((element.text or "").split())
        if text:
            return text
    return None


def _clean_title(title: str | None) -> str | None:
    """A plain English-looking title of 2-8 words, lower-cased, or None.

    Parentheses and standalone numbers are dropped ("Pepperoni Pizza Slice (B and W)" is
    "pepperoni pizza slice"); titles naming a collection, a theme, an author or a file format,
    and titles with other than plain letters, are left out.
    """
    if not title or _NOISE.search(title):
        return None
    title = re.sub(r"\([^)]*\)", " ", title)
    title = re.sub(r"[,;:.!?/_&+-]", " ", title)
    words = [w for w in title.split() if not w.isdigit()]
    if not 2 <= len(words) <= 8 or not all(_TITLE.fullmatch(w) for w in words):
        return None
    if all(w.isupper() for w in words):
        return None
    return " ".join(words).lower()


def _usable_size(png: Path) -> bool:
    """Whether the PNG's header says at most ``MAX_PIXELS`` pixels (a few drawings are huge) and a
    longer side of at least ``MIN_SIDE`` (a few are a handful of pixels)."""
    try:
        with warnings.catch_warnings():  # the header of a huge drawing is what this check rejects
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(png) as img:
                return img.width * img.height <= MAX_PIXELS and max(img.size) >= MIN_SIDE
    except (OSError, Image.DecompressionBombError):
        return False


def clipart_items() -> list[dict]:
    png_root, svg_root = OPENCLIPART / "png", OPENCLIPART / "svg"
    for path in (png_root, svg_root):
        if not path.is_dir():
            raise _missing(path)
    items, seen = [], set()
    for png in sorted(png_root.rglob("*.png")):
        rel = png.relative_to(png_root)
        if rel.parts[0] in ("shapes", "special"):
            continue
        title = _clean_title(_svg_title((svg_root / rel).with_suffix(".svg")))
        if title is None or title in seen or not _usable_size(png):
            continue
        seen.add(title)
        items.append({"image": str(png), "caption": title, "source": "clipart"})
    return items


def _unique_captions(items: list[dict]) -> list[dict]:
    """The items whose caption (lower-cased, letters and digits only) has not been seen before."""
    seen, kept = set(), []
    for item in items:
        key = " ".join(re.findall(r"[a-z0-9]+", item["caption"].lower()))
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


def _apportion(count: int, sizes: list[int]) -> list[int]:
    """``count`` shared out in proportion to ``sizes``, summing to exactly ``count`` (largest remainders)."""
    total = sum(sizes)
    shares = [count * n / total for n in sizes]
    parts = [int(x) for x in shares]
    by_remainder = sorted(range(len(sizes)), key=lambda k: parts[k] - shares[k])
    for k in by_remainder[: count - sum(parts)]:
        parts[k] += 1
    return parts


def _split(items: list[dict], test_images: int, val_images: int, seed: int) -> None:
    """Assign ``split`` in place: each source shuffled, then dealt out in proportion."""
    rng = random.Random(seed)
    sources = sorted({i["source"] for i in items})
    sizes = [sum(1 for i in items if i["source"] == s) for s in sources]
    n_test, n_val = _apportion(test_images, sizes), _apportion(val_images, sizes)
    for s, source in enumerate(sources):
        group = [i for i in items if i["source"] == source]
        rng.shuffle(group)
        for k, item in enumerate(group):
            item["split"] = "test" if k < n_test[s] else "val" if k < n_test[s] + n_val[s] else "train"


def ood_records(records: list[dict], held_out: str) -> list[dict]:
    """The manifest lines of the setting "``held_out`` held out" (see the module docstring).

    Args:
        records: the in-domain manifest's lines, each with ``source`` and ``split``.
        held_out: the source whose test split alone is the test split.

    Returns:
        The kept lines, in order and unchanged: the other sources' train and val lines, and
        ``held_out``'s test lines.
    """
    return [r for r in records if (r["split"] == "test" if r["source"] == held_out else r["split"] in ("train", "val"))]


def _split_counts(records: list[dict]) -> dict[str, int]:
    return {k: sum(1 for r in records if r["split"] == k) for k in ("train", "val", "test")}


def _write_manifest(path: Path, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def write_ood_manifests(out: str | Path, records: list[dict]) -> dict[str, dict[str, int]]:
    """Write ``OUT/manifest_ood_S.jsonl`` for each source S of :data:`SOURCES` (:func:`ood_records`).

    Returns:
        ``{S: {"train": n, "val": n, "test": n}}``, the images of each split per setting.

    Raises:
        DsmdError: a setting would have an empty split (e.g. a source without test images);
            nothing is written then.
    """
    settings = {s: ood_records(records, s) for s in SOURCES}
    counts = {s: _split_counts(kept) for s, kept in settings.items()}
    for s, c in counts.items():
        empty = [k for k, n in c.items() if n == 0]
        if empty:
            raise DsmdError(f"the out-of-domain setting '{s} held out' would have no {empty[0]} images.")
    for s, kept in settings.items():
        _write_manifest(Path(out) / f"manifest_ood_{s}.jsonl", kept)
    return counts


def build_offline_benchmark(
    out: str | Path, test_images: int = 1000, val_images: int = 300, seed: int = 0, log=print, unpaired: bool = False
) -> Path:
    """Build the benchmark into ``out`` (see the module docstring); returns the manifest's path.

    Args:
        unpaired: also write the pools of unpaired data (:func:`~dsmd.data.offline_unpaired.build_unpaired_pools`).

    Raises:
        DsmdError: a package is missing, there are too few images for the splits, or another
            command is writing ``out`` (its lock, naming the holder).
    """
    out = Path(out)
    with exclusive_folder(out, "--out"):  # one writer: a second build into OUT is refused, naming this one
        return _build(out, test_images, val_images, seed, log, unpaired)


def _build(out: Path, test_images: int, val_images: int, seed: int, log, unpaired: bool) -> Path:
    """Build the benchmark into ``out`` (the caller holds its lock)."""
    out.mkdir(parents=True, exist_ok=True)
    items = _unique_captions([*stamp_items(), *emoji_items(out), *clipart_items()])
    if len(items) < test_images + val_images + 1000:
        raise DsmdError(f"only {len(items)} images found; the benchmark needs {test_images + val_images + 1000}.")
    _split(items, test_images, val_images, seed)
    records = [
        {"image": i["image"], "captions": [i["caption"]], "split": i["split"], "source": i["source"]} for i in items
    ]
    manifest = out / "manifest.jsonl"
    _write_manifest(manifest, records)
    ood = write_ood_manifests(out, records)
    counts = {s: _split_counts([r for r in records if r["source"] == s]) for s in SOURCES}
    write_text_atomic(out / "README.md", _readme(counts, ood))
    log(
        f"offline benchmark {out}: "
        + ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items())
        + f"; test {sum(c['test'] for c in counts.values())} images; out of domain: "
        + ", ".join(f"manifest_ood_{s}.jsonl (test {c['test']})" for s, c in ood.items())
    )
    if unpaired:
        from dsmd.data.offline_unpaired import build_unpaired_pools

        build_unpaired_pools(out, items, log)
    return manifest


def write_zero_shot_folders(out: str | Path, manifest: str | Path) -> dict[str, int]:
    """``OUT/zero_shot/clipart/<category>/``: the benchmark's clip art *test* images (links), one
    folder per top-level Open Clip Art category, for ``dsmd zero-shot``; returns the images per category.

    Categories with fewer than two test images are left out (no class to recall).
    """
    records = [json.loads(line) for line in Path(manifest).read_text(encoding="utf-8").splitlines() if line.strip()]
    by_class: dict[str, list[Path]] = {}
    for r in records:
        if r["source"] == "clipart" and r["split"] == "test":
            image = (Path(manifest).parent / r["image"]).resolve()
            top = (
                image.relative_to(OPENCLIPART / "png").parts[0]
                if (OPENCLIPART / "png") in image.parents
                else image.parent.name
            )
            by_class.setdefault(top, []).append(image)
    root = Path(out) / "zero_shot" / "clipart"
    counts = {}
    for name, images in sorted(by_class.items()):
        if len(images) < 2:
            continue
        (root / name).mkdir(parents=True, exist_ok=True)
        for image in images:
            link = root / name / image.name
            if not link.is_symlink():
                link.symlink_to(image)
        counts[name] = len(images)
    return counts


def _readme(counts: dict[str, dict[str, int]], ood: dict[str, dict[str, int]]) -> str:
    rows = "\n".join(f"| {s} | {c['train']} | {c['val']} | {c['test']} |" for s, c in counts.items())
    ood_rows = "\n".join(
        f"| `manifest_ood_{s}.jsonl` | {s} | {c['train']} | {c['val']} | {c['test']} |" for s, c in ood.items()
    )
    total = {k: sum(c[k] for c in counts.values()) for k in ("train", "val", "test")}
    return f"""# The offline benchmark

Built by `dsmd build-benchmark` ({__name__}); one caption per image, split by image with a
fixed seed, each source in proportion; each caption once over all sources (the first image
with it), so every caption has exactly one right image.

| source | train | val | test |
|---|---|---|---|
{rows}
| all | {total["train"]} | {total["val"]} | {total["test"]} |

`manifest.jsonl` is the in-domain setting above. Each `manifest_ood_S.jsonl` is an
out-of-domain setting, "S held out": train and val are the train and val images of the two
other sources, test is the test images of S alone (the same split of every image as in
`manifest.jsonl`; S's train and val images and the other sources' test images are left out).

| manifest | held out | train | val | test |
|---|---|---|---|---|
{ood_rows}

- photo stamps: Debian `tuxpaint-stamps-default` (GPL-2.0), the first line of each stamp's
  caption file; folders `symbols/` and `cartoon/` left out.
- emoji: Debian `fonts-noto-color-emoji` (SIL OFL 1.1) drawn by Pillow on white at 128 px; the
  caption is the CLDR name from the `emoji` package's table (fully qualified emoji; no
  skin-tone variants, flags or keycaps; sequences the font cannot draw as one glyph left out).
- clip art: Debian `openclipart-png` (public domain, CC0), titles from `openclipart-svg`: 2-8
  words of plain letters, no collection labels, numbers or file names, each title once, a
  longer side of at least 64 px and at most 4096x4096 pixels,
  folders `shapes/` and `special/` left out.
"""
