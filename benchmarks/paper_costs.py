"""What the paper's runs cost: parameters, FLOPs, feature-store size, and GPU hours computed from them.

Builds the paper's student (ViT-B/16 + BERT-base, each with a linear layer to D) and the
BEiT-3 teachers with random weights (no download), counts the FLOPs of one training step and
of one teacher forward with ``torch.utils.flop_counter``, and derives, for Flickr30k and
COCO (Karpathy splits): steps, training FLOPs, store sizes and the hours a GPU needs at a
given sustained throughput. On this machine it also *measures* one fp32 training step of the
student on the CPU (time and the growth of the process's peak resident memory).

The GPU hours are computed, not measured: FLOPs / (sustained TFLOP/s). Read them as a lower
bound for an input pipeline that keeps up.

    .venv/bin/python benchmarks/paper_costs.py               # table + JSON line
    .venv/bin/python benchmarks/paper_costs.py --measure-batch 0   # skip the CPU step
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dsmd.models.student import DualEncoder
from dsmd.models.text import TextTower
from dsmd.models.vision import HFVisionTower

# Karpathy splits (train includes COCO's restval): images, captions.
DATASETS = {"flickr30k": (29_000, 145_000, 1_000, 5_000), "coco": (113_287, 566_747, 5_000, 25_000)}
TEXT_LEN = 32  # tokens per caption, padded (Flickr30k / COCO captions are 12-20 words)


def paper_student(dim: int) -> DualEncoder:
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(), add_pooling_layer=False)  # ViT-B/16 at 224 px
    bert = BertModel(BertConfig(), add_pooling_layer=False)  # BERT-base, uncased vocabulary
    return DualEncoder(
        HFVisionTower(vit),
        TextTower(bert, tokenizer=None, pooling="cls"),
        dim,
        image_size=224,
        max_text_length=TEXT_LEN,
    )


def step_flops(student: DualEncoder, batch: int, counted: int = 2) -> int:
    """Forward + backward FLOPs of one student step on ``batch`` pairs (losses excluded: <1%).

    Counted on ``counted`` pairs and scaled: every op of the towers is linear in the batch.
    """
    pixels = torch.randn(counted, 3, 224, 224)
    ids = torch.randint(0, 30522, (counted, TEXT_LEN))
    mask = torch.ones_like(ids)
    with FlopCounterMode(display=False) as counter:
        image, text = student(pixels, ids, mask)
        (image.sum() + text.sum()).backward()
    student.zero_grad(set_to_none=True)
    return counter.get_total_flops() * batch // counted


def teacher_flops(size: str) -> dict:
    """FLOPs of BEiT-3 ``size`` on one 384 px image and one 64-token caption (padded, as released)."""
    from dsmd.teachers.beit3 import BEiT3Config, BEiT3ForRetrieval

    cfg = getattr(BEiT3Config, size)()
    model = BEiT3ForRetrieval(cfg).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as c_img:
        model.image_features(torch.randn(1, 3, 384, 384))
    ids = torch.randint(0, 1000, (1, 64))
    with torch.inference_mode(), FlopCounterMode(display=False) as c_txt:
        model.text_features(ids, torch.zeros_like(ids, dtype=torch.bool))
    params = sum(p.numel() for p in model.parameters())
    return {
        "params": params,
        "dim": cfg.embed_dim,
        "image_gflops": c_img.get_total_flops() / 1e9,
        "caption_gflops": c_txt.get_total_flops() / 1e9,
    }


def measure_cpu_step(student: DualEncoder, batch: int) -> dict:
    """Wall time and peak-RSS growth of one fp32 forward + backward + AdamW step on the CPU."""
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    pixels = torch.randn(batch, 3, 224, 224)
    ids = torch.randint(0, 30522, (batch, TEXT_LEN))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    image, text = student(pixels, ids, torch.ones_like(ids))
    (image.sum() + text.sum()).backward()
    opt.step()
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"batch": batch, "seconds": round(seconds, 2), "peak_rss_growth_gib": round((after - before) / 2**20, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="training batch (paper: 64)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument(
        "--tflops", type=float, nargs="+", default=[100.0, 300.0], help="sustained TFLOP/s to compute GPU hours for"
    )
    p.add_argument("--measure-batch", type=int, default=16, help="CPU step to time (0: skip)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    torch.manual_seed(0)

    teachers = {size: teacher_flops(size) for size in ("base", "large")}
    for size, t in teachers.items():
        print(
            f"BEiT-3 {size}: {t['params'] / 1e6:.1f}M params, {t['image_gflops']:.0f} GFLOPs per 384 px image, "
            f"{t['caption_gflops']:.1f} GFLOPs per 64-token caption"
        )
    result = {"teacher": teachers, "student": {}, "datasets": {}}
    for size, dim in (("base", 768), ("large", 1024)):
        student = paper_student(dim).train()
        params = sum(p.numel() for p in student.parameters())
        flops = step_flops(student, args.batch)
        result["student"][size] = {"dim": dim, "params": params, "step_tflops": flops / 1e12}
        print(
            f"student for BEiT-3 {size} (D={dim}): {params / 1e6:.1f}M params, "
            f"{flops / 1e12:.2f} TFLOPs per step of {args.batch} pairs (fwd+bwd)"
        )
    if args.measure_batch:
        cpu = measure_cpu_step(paper_student(768).train(), args.measure_batch)
        result["cpu_step_measured"] = cpu
        print(
            f"measured here (CPU, fp32): one step of {cpu['batch']} pairs {cpu['seconds']} s, "
            f"peak RSS +{cpu['peak_rss_growth_gib']} GiB"
        )

    print(
        "\n| dataset | teacher | store (fp32 / fp16) | extraction TFLOPs | train steps | train PFLOPs | "
        + " | ".join(f"GPU h @ {t:g} TFLOP/s" for t in args.tflops)
        + " |"
    )
    print("|---" * (6 + len(args.tflops)) + "|")
    for name, (n_img, n_cap, test_img, test_cap) in DATASETS.items():
        for size in ("base", "large"):
            t = teachers[size]
            dim = result["student"][size]["dim"]
            rows = n_img + n_cap + test_img + test_cap
            store_gb = rows * dim * 4 / 1e9
            extract_tf = ((n_img + test_img) * t["image_gflops"] + (n_cap + test_cap) * t["caption_gflops"]) / 1e3
            steps = -(-n_cap // args.batch) * args.epochs
            train_pf = steps * result["student"][size]["step_tflops"] / 1e3
            total_tf = train_pf * 1e3 + extract_tf
            hours = [total_tf / t_ / 3600 for t_ in args.tflops]
            result["datasets"][f"{name}/{size}"] = {
                "images": n_img,
                "captions": n_cap,
                "store_gb_fp32": round(store_gb, 2),
                "extract_tflops": extract_tf,
                "train_steps": steps,
                "train_pflops": round(train_pf, 1),
                "gpu_hours": {f"{t_:g}": round(h, 2) for t_, h in zip(args.tflops, hours, strict=True)},
            }
            ext = f"{extract_tf:,.0f}"
            print(
                f"| {name} | BEiT-3 {size} | {store_gb:.2f} / {store_gb / 2:.2f} GB | {ext} | {steps:,} | "
                f"{train_pf:,.0f} | " + " | ".join(f"{h:.1f}" for h in hours) + " |"
            )
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
