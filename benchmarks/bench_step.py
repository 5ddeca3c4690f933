"""Breakdown of one training step of the demo student: how much do the DSMD losses cost?

Times (median of --repeats steps after --warmup) the parts of a step with the packaged demo
config: student forward, the four losses against the queue, the balancer, backward, AdamW,
the queue update; and, separately, the losses + balancer forward and backward on leaf copies
of the student's features, so their share of the backward pass is counted too. Prints a table and one JSON line (``--json PATH`` writes it).

    .venv/bin/python benchmarks/bench_step.py
    .venv/bin/python benchmarks/bench_step.py loss.queue_size=8192 train.batch_size=64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from dsmd.balancer import LossBalancer
from dsmd.config import load_config, packaged_config
from dsmd.losses import MultiscaleDistillationLoss
from dsmd.models import build_student


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="demo config overrides")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--json", help="write the JSON result here")
    args = p.parse_args()
    cfg = load_config(packaged_config("demo"), args.overrides)
    paired = [name for name in cfg.loss.losses if not name.startswith("u_")]
    if paired != list(cfg.loss.losses):  # a step's unpaired items are other inputs: this times the pairs' part
        print(f"timing the paired losses {', '.join(paired)} (the u_* losses on pool items are left out)")
        cfg = load_config(packaged_config("demo"), [*args.overrides, f"loss.losses=[{', '.join(paired)}]"])
    torch.manual_seed(0)
    dim, b = 384, cfg.train.batch_size
    student = build_student(cfg.student, dim).train()
    objective = MultiscaleDistillationLoss.from_config(cfg.loss, dim)
    bal = cfg.balancer
    balancer = LossBalancer(list(cfg.loss.losses), mode=bal.mode, temperature=bal.temperature, window=bal.window)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    pixels = torch.randn(b, 3, cfg.student.image_size, cfg.student.image_size)
    tokens = student.tokenize([f"a photo of a red kangaroo number {i} on the grass." for i in range(b)])
    # fill the queue first, as in a run past its first epochs
    for _ in range(-(-cfg.loss.queue_size // b)):
        ti, tt = F.normalize(torch.randn(b, dim), dim=-1), F.normalize(torch.randn(b, dim), dim=-1)
        objective.update_queue(ti, tt, torch.randint(0, 10**6, (b,)))

    def step() -> dict[str, float]:
        teacher_image = F.normalize(torch.randn(b, dim), dim=-1)
        teacher_text = F.normalize(torch.randn(b, dim), dim=-1)
        ids = torch.randint(0, 10**6, (b,))
        t0 = time.perf_counter()
        s_img, s_txt = student(pixels, tokens["input_ids"], tokens["attention_mask"])
        t1 = time.perf_counter()
        losses = objective(s_img, s_txt, teacher_image, teacher_text, ids)
        t2 = time.perf_counter()
        total, _ = balancer(losses)
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total.backward()
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        objective.update_queue(teacher_image, teacher_text, ids)
        t6 = time.perf_counter()
        # The losses' own backward: the same losses on leaf copies of the student features.
        leaf_img, leaf_txt = s_img.detach().requires_grad_(), s_txt.detach().requires_grad_()
        t7 = time.perf_counter()
        leaf_total, _ = balancer(objective(leaf_img, leaf_txt, teacher_image, teacher_text, ids))
        leaf_total.backward()
        t8 = time.perf_counter()
        return dict(
            forward=t1 - t0,
            losses=t2 - t1,
            balancer=t3 - t2,
            backward=t4 - t3,
            optimizer=t5 - t4,
            queue_update=t6 - t5,
            total=t6 - t0,
            losses_fwd_bwd=t8 - t7,
        )

    runs = []
    for i in range(args.warmup + args.repeats):
        r = step()
        if i >= args.warmup:
            runs.append(r)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    share = (med["losses_fwd_bwd"] + med["queue_update"]) / med["total"]
    result = {
        "batch": b,
        "image_size": cfg.student.image_size,
        "queue_size": cfg.loss.queue_size,
        "losses": cfg.loss.losses,
        "threads": torch.get_num_threads(),
        **{f"{k}_ms": round(v * 1e3, 2) for k, v in med.items()},
        "losses_queue_balancer_share": round(share, 4),
    }
    print(f"{'part':<14}{'ms':>10}")
    for k in ("forward", "losses", "balancer", "backward", "optimizer", "queue_update", "total"):
        print(f"{k:<14}{med[k] * 1e3:>10.2f}")
    print(f"losses + balancer, forward and backward: {med['losses_fwd_bwd'] * 1e3:.2f} ms")
    print(f"losses + balancer + queue: {100 * share:.2f}% of the training step")
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
