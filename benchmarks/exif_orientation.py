"""A photo stored sideways with an EXIF orientation tag, as a student sees it without and with the tag.

Writes a demo stamp (a Tux Paint photo, composited onto white) as two JPEGs, as a phone would:
upright, and stored turned a quarter with EXIF orientation 6 (every viewer shows it upright); with
``--format png``, as two PNGs, so that nothing but the orientation differs (a JPEG's artefacts
differ between the two: the cosine "with the tag" is that of JPEG noise alone). Then
prints, as JSON lines, the cosine between the student's features of the two files, decoded

- ``without_tag``: as dsmd decoded images before it applied the tag (reimplemented here: PIL's
  stored pixels, the tag ignored);
- ``with_tag``: as dsmd decodes them now, from the path (:func:`dsmd.data.images.load_image`)
  and from a PIL image given to the encoder (:func:`dsmd.data.images.to_rgb`).

The first line is for ``--stamp``; the last summarises the first ``--count`` stamps of the demo's
data (sorted by path).

    .venv/bin/python benchmarks/exif_orientation.py [--student CHECKPOINT_OR_EXPORT] [--count 40] [--format png]

Student: ``--student``, else the demo's (``demo_out/train/checkpoints/best.pt``) when present,
else the demo config's student before distillation (its pretrained towers and the image head
initialised from the offline teacher's prompts, as training starts).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import dsmd
from dsmd.inference.encoder import Encoder

STAMPS = Path("/usr/share/tuxpaint/stamps")
DEMO_STUDENT = Path("demo_out/train/checkpoints/best.pt")
SIDEWAYS = 6  # EXIF: the stored picture must be turned 90 degrees clockwise to be seen upright


def init_student() -> Encoder:
    """The demo config's student as training starts (no distillation yet), as an encoder."""
    import torch

    from dsmd.config import load_config, packaged_config
    from dsmd.models import build_student
    from dsmd.training.setup import vision_proj_init

    cfg = load_config(packaged_config("demo"), [])
    torch.manual_seed(cfg.train.seed)
    student = build_student(cfg.student, 384, vision_proj_init=vision_proj_init(cfg)).eval()
    transform = student.image_transform(train=False)
    return Encoder(
        student, transform, student.dim, True, "offline", "demo student at init", "init", torch.device("cpu")
    )


def write_pair(stamp: Path, folder: Path, fmt: str = "jpeg") -> tuple[Path, Path]:
    """``(upright, sideways)`` files: the stamp on white; the second stored turned, tagged 6."""
    rgba = Image.open(stamp).convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    photo = canvas.convert("RGB")
    suffix, options = (".jpg", {"quality": 95}) if fmt == "jpeg" else (".png", {})
    upright, sideways = folder / f"{stamp.stem}_upright{suffix}", folder / f"{stamp.stem}_sideways{suffix}"
    photo.save(upright, **options)
    exif = Image.Exif()
    exif[0x0112] = SIDEWAYS
    photo.transpose(Image.Transpose.ROTATE_90).save(sideways, exif=exif, **options)
    return upright, sideways


def decode_ignoring_the_tag(path: Path) -> Image.Image:
    """The old decoding of an opaque image: its stored pixels (a new image, so no EXIF travels along)."""
    with Image.open(path) as img:
        return Image.fromarray(np.asarray(img.convert("RGB")))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def measure(encoder: Encoder, stamp: Path, folder: Path, fmt: str) -> dict:
    upright, sideways = write_pair(stamp, folder, fmt)
    reference = encoder.encode_images([upright])[0]
    before = encoder.encode_images([decode_ignoring_the_tag(sideways)])[0]
    by_path = encoder.encode_images([sideways])[0]
    with Image.open(sideways) as img:
        by_pil = encoder.encode_images([img])[0]
    return {
        "stamp": str(stamp.relative_to(STAMPS)),
        "without_tag": round(cosine(reference, before), 4),
        "with_tag_path": round(cosine(reference, by_path), 4),
        "with_tag_pil": round(cosine(reference, by_pil), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", help="checkpoint or export folder (default: the demo's, else the demo student at init)")
    p.add_argument("--stamp", default=str(STAMPS / "animals/mammals/badger.png"))
    p.add_argument("--count", type=int, default=40, help="stamps in the summary line")
    p.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    args = p.parse_args()
    path = Path(args.student) if args.student else DEMO_STUDENT
    encoder = dsmd.load_student(path) if path.exists() else init_student()
    print(json.dumps({"student": encoder.name, "format": args.format}))
    stamps = sorted(s for s in STAMPS.rglob("*.png") if s.parts[len(STAMPS.parts)] not in ("symbols", "cartoon"))
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(encoder, Path(args.stamp), Path(tmp), args.format)))
        rows = [measure(encoder, stamp, Path(tmp), args.format) for stamp in stamps[: args.count]]
    summary = {"stamps": len(rows)}
    for key in ("without_tag", "with_tag_path", "with_tag_pil"):
        values = [row[key] for row in rows]
        summary[key] = {"mean": round(float(np.mean(values)), 4), "min": round(min(values), 4)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
