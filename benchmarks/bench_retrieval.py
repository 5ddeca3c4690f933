"""Benchmark ``retrieval_metrics`` against the bare similarity product, and check it is exact.

At the MSCOCO 5K test scale by default (5,000 images x 5 captions, D = 768, float32, CPU):

* times ``text @ image.T``, the one matrix product any retrieval evaluation must pay for, and
  ``retrieval_metrics`` (best of ``--repeats`` each); the target is a ratio of at most 1.5;
* checks that the metrics (and the per-query ranks) equal a brute-force reference (the full
  similarity matrix, every row and column sorted) on two feature sets: independent random
  features, whose recalls are near zero, and correlated ones (each caption = its image +
  noise, renormalised) whose recalls are not.

Ranks may differ by one where a negative scores within float32 rounding of a positive:
``retrieval_metrics`` compares exact scores (float64 products summed in a fixed order, the same
for every pair), the reference the entries of its one float32 product. The table counts them.

Prints a table and a JSON line; ``--json PATH`` also writes the JSON there. Exits 1 when the
metrics differ from the reference.

    python benchmarks/bench_retrieval.py [--images 5000] [--captions 5] [--dim 768] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dsmd.evaluation import retrieval_metrics, retrieval_ranks


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` wall-clock runs of each function, in seconds.

    The functions take turns, so that a burst of other load on the machine hits both alike;
    the fastest run is the one least disturbed.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(runs) for name, runs in times.items()}


def make_features(
    num_images: int, captions: int, dim: int, noise: float | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images ``(N_i, D)``, captions ``(N_i * captions, D)``, ids ``(N_t,)``, all normalised.

    ``noise=None`` draws captions independently of images; otherwise a caption is its image
    plus Gaussian noise of that norm (per feature vector), renormalised.
    """
    image = F.normalize(torch.randn(num_images, dim, generator=generator), dim=1)
    ids = torch.arange(num_images).repeat_interleave(captions)
    ids = ids[torch.randperm(len(ids), generator=generator)]
    if noise is None:
        text = torch.randn(len(ids), dim, generator=generator)
    else:
        text = image[ids] + noise * F.normalize(torch.randn(len(ids), dim, generator=generator))
    return image, F.normalize(text, dim=1), ids


def reference_ranks(image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: the full ``(N_t, N_i)`` matrix, every row and column sorted.

    A query's rank is the number of candidates scoring strictly higher than its correct item
    (the best of them, for an image), found by binary search in the sorted scores.

    Returns:
        Image→text ranks ``(N_i,)`` (-1 for an image without captions) and text→image ranks
        ``(N_t,)``, 0-based.
    """
    num_images, num_texts = image.shape[0], text.shape[0]
    sim = text @ image.T
    positive = sim[torch.arange(num_texts), ids]
    best_positive = torch.full((num_images,), -torch.inf)
    best_positive.scatter_reduce_(0, ids, positive, reduce="amax")

    ascending = torch.sort(sim, dim=1).values
    t2i_rank = num_images - torch.searchsorted(ascending, positive[:, None], right=True)
    del ascending
    ascending = torch.sort(sim.T.contiguous(), dim=1).values
    del sim
    i2t_rank = num_texts - torch.searchsorted(ascending, best_positive[:, None], right=True)
    i2t_rank[torch.bincount(ids, minlength=num_images) == 0] = -1
    return i2t_rank.squeeze(1), t2i_rank.squeeze(1)


def reference_metrics(i2t_rank: torch.Tensor, t2i_rank: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K in percent from reference ranks, and their sum."""
    i2t_rank = i2t_rank[i2t_rank >= 0]
    metrics = {f"i2t_r{k}": 100.0 * (i2t_rank < k).double().mean().item() for k in ks}
    metrics |= {f"t2i_r{k}": 100.0 * (t2i_rank < k).double().mean().item() for k in ks}
    metrics["rsum"] = sum(metrics.values())
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions", type=int, default=5, help="captions per image")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timing runs; the best counts")
    parser.add_argument("--chunk-size", type=int, default=None, help="captions per block")
    parser.add_argument("--noise", type=float, default=7.0,
                        help="caption noise norm for the correlated set")  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="also write the JSON result here")
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(args.seed)
    sets = {
        "random": make_features(args.images, args.captions, args.dim, None, generator),
        "correlated": make_features(args.images, args.captions, args.dim, args.noise, generator),
    }
    image, text, ids = sets["random"]

    seconds = best_times(
        {
            "matmul": lambda: text @ image.T,
            "metrics": lambda: retrieval_metrics(image, text, ids, chunk_size=args.chunk_size),
        },
        args.repeats,
    )
    matmul_s, metrics_s = seconds["matmul"], seconds["metrics"]

    identical = True
    rows = []
    for name, (image, text, ids) in sets.items():
        ours = retrieval_metrics(image, text, ids, chunk_size=args.chunk_size)
        ranks = retrieval_ranks(image, text, ids, chunk_size=args.chunk_size)
        start = time.perf_counter()
        i2t_rank, t2i_rank = reference_ranks(image, text, ids)
        reference_s = time.perf_counter() - start
        same = ours == reference_metrics(i2t_rank, t2i_rank)
        identical &= same
        rank_gap = torch.cat([ranks.image_to_text - i2t_rank, ranks.text_to_image - t2i_rank]).abs()
        rows.append((name, ours, same, rank_gap, reference_s))

    print(f"{args.images} images x {args.captions} captions, D={args.dim}, float32, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'text @ image.T':<22}{matmul_s:8.3f} s")
    print(f"{'retrieval_metrics':<22}{metrics_s:8.3f} s   ratio {metrics_s / matmul_s:.3f}")
    keys = list(rows[0][1])
    print(f"\n{'set':<12}" + "".join(f"{k:>9}" for k in keys) + "  vs brute force")
    for name, ours, same, rank_gap, reference_s in rows:
        values = "".join(f"{ours[k]:9.2f}" for k in keys)
        verdict = (f"metrics {'identical' if same else 'DIFFERENT'}; "
                   f"{int((rank_gap > 0).sum())} of {len(rank_gap)} ranks differ, "
                   f"by at most {int(rank_gap.max())} ({reference_s:.0f} s)")  # fmt: skip
        print(f"{name:<12}{values}  {verdict}")

    result = {
        "images": args.images,
        "captions": args.images * args.captions,
        "dim": args.dim,
        "matmul_s": round(matmul_s, 4),
        "metrics_s": round(metrics_s, 4),
        "ratio": round(metrics_s / matmul_s, 3),
        "identical": identical,
        "rank_mismatches": sum(int((row[3] > 0).sum()) for row in rows),
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
