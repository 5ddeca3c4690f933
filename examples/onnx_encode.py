"""Encode images and captions with an exported dsmd student using onnxruntime alone (no torch).

Needs: numpy, pillow, onnxruntime, tokenizers (pip install numpy pillow onnxruntime tokenizers).

    python examples/onnx_encode.py EXPORT_DIR --images a.jpg b.png --texts "a red kangaroo" "a bird"

Prints, for each caption, the images ranked by cosine similarity; ``--out FILE.npz`` also saves
the features (``images`` (N_i, D), ``texts`` (N_t, D)). The export folder comes from
``dsmd export --checkpoint CKPT --out EXPORT_DIR --onnx``; its ``preprocessing.json`` says how
pixels are prepared, which this script follows step by step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def load_rgb(path: str) -> Image.Image:
    """8-bit RGB with transparency composited onto white (as dsmd decodes every image)."""
    img = Image.open(path)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")


def pixels(img: Image.Image, prep: dict) -> np.ndarray:
    """``(3, S, S)`` float32, resized, cropped and normalised as ``preprocessing.json`` says."""
    size, resample = prep["size"], RESAMPLE[prep["resample"]]
    if prep["resize"].startswith("short side"):
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), resample)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    else:
        img = img.resize((size, size), resample)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(prep["mean"], dtype=np.float32)) / np.array(prep["std"], dtype=np.float32)
    return x.transpose(2, 0, 1)


def tokenizer(folder: Path, max_length: int) -> Tokenizer:
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = (
        json.loads((folder / "tokenizer_config.json").read_text())
        if (folder / "tokenizer_config.json").is_file()
        else {}
    )
    pad = config.get("pad_token") or "[PAD]"
    pad = pad["content"] if isinstance(pad, dict) else pad
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=tok.token_to_id(pad), pad_token=pad)
    return tok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", help="an export folder written with --onnx")
    p.add_argument("--images", nargs="*", default=[])
    p.add_argument("--texts", nargs="*", default=[])
    p.add_argument("--out", help="save the features to this .npz file")
    args = p.parse_args()
    folder = Path(args.export)
    prep = json.loads((folder / "preprocessing.json").read_text())
    images = np.zeros((0, 0), dtype=np.float32)
    if args.images:
        session = ort.InferenceSession(str(folder / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
        batch = np.stack([pixels(load_rgb(path), prep) for path in args.images])
        (images,) = session.run(["features"], {"pixel_values": batch})
    texts = np.zeros((0, 0), dtype=np.float32)
    if args.texts:
        session = ort.InferenceSession(str(folder / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
        encodings = tokenizer(folder, prep["text"]["max_length"]).encode_batch(args.texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (texts,) = session.run(["features"], {"input_ids": ids, "attention_mask": mask})
    if args.out:
        np.savez(args.out, images=images, texts=texts)
    for text, feature in zip(args.texts, texts, strict=True):
        if len(images):
            scores = images @ feature
            ranked = ", ".join(f"{args.images[i]} {scores[i]:.3f}" for i in np.argsort(-scores))
            print(f"{text!r}: {ranked}")


if __name__ == "__main__":
    main()
