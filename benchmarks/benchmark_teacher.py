"""The offline teacher on the offline benchmark: R@K on a split, overall and by source, against chance.

Queries of each source are ranked against the whole split (1,000 images and captions for
test), so the per-source figures add up to the overall one; chance is the recall a random
ranking gets (``K / gallery size`` per query).

    .venv/bin/python benchmarks/benchmark_teacher.py [--split test] [--store runs/offline/store]

Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dsmd.config import load_config
from dsmd.data.datasets import load_split
from dsmd.evaluation.retrieval import retrieval_ranks
from dsmd.store import FeatureStore

KS = (1, 5, 10)


def _recalls(ranks: torch.Tensor) -> list[float]:
    return [100.0 * (ranks < k).double().mean().item() for k in KS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test")
    parser.add_argument("--store", default="runs/offline/store")
    args = parser.parse_args(argv)
    cfg = load_config("offline_benchmark")
    data = load_split(cfg.data, args.split)
    feats = FeatureStore.open(args.store).split(args.split)
    ranks = retrieval_ranks(feats.image, feats.text, feats.caption_image)
    manifest = Path(cfg.data.manifest)
    source_of = {}
    for line in manifest.read_text().splitlines():
        item = json.loads(line)
        path = Path(item["image"])
        source_of[str(path if path.is_absolute() else (manifest.parent / path))] = item["source"]
    image_source = [source_of[str(Path(p))] for p in data.image_paths]
    caption_source = [image_source[i] for i in data.caption_image]
    rows = {}
    for source in ("all", *sorted(set(image_source))):
        images = torch.tensor([source in ("all", s) for s in image_source])
        captions = torch.tensor([source in ("all", s) for s in caption_source])
        i2t, t2i = _recalls(ranks.image_to_text[images]), _recalls(ranks.text_to_image[captions])
        rows[source] = {"images": int(images.sum()), "i2t": i2t, "t2i": t2i, "rsum": sum(i2t) + sum(t2i)}
    n_i, n_t = len(data.image_paths), len(data.captions)
    chance_i2t = [100.0 * min(1.0, k / n_t) for k in KS]  # one caption per image
    chance_t2i = [100.0 * min(1.0, k / n_i) for k in KS]
    rows["chance"] = {"images": n_i, "i2t": chance_i2t, "t2i": chance_t2i, "rsum": sum(chance_i2t) + sum(chance_t2i)}
    print(f"offline teacher on the offline benchmark, split {args.split}: {n_i} images, {n_t} captions\n")
    print("| queries from | images | i2t R@1 / 5 / 10 | t2i R@1 / 5 / 10 | RSUM |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        fmt = " / ".join
        print(
            f"| {name} | {r['images']} | {fmt(f'{v:.1f}' for v in r['i2t'])} | {fmt(f'{v:.1f}' for v in r['t2i'])} "
            f"| {r['rsum']:.1f} |"
        )
    print(json.dumps({"split": args.split, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
