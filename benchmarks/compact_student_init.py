"""What the compact student's factorisations cost at initialisation, before any training.

The student is ``offline_student_d``'s (EfficientNet-Lite0 with its ImageNet head, ``vision_proj``
started from the teacher's prompt matrix, MiniLM's first layer, 96 px). Each factorised variant
is compared with the same student unfactorised, on the demo's training split (the Tux Paint
stamps: ``dsmd demo``'s data): the mean (and lowest) cosine between their outputs, per caption
for ``student.text_embedding_rank`` r in 16, 32, 64, 128 and full (384), and per image for
``student.vision_head_rank`` r in 64, 128, 256 and full (1000). The text ranks are also measured
on the whole 6-layer MiniLM, to separate the embeddings' effect from the cut to one layer; the
1-layer rows also give the cosine to the 6-layer MiniLM, the teacher's own text features.
``student.text_positions=32`` keeps the outputs exactly (captions have at most 32 tokens) and
drops 480 x 384 parameters. Then the parameters of every combination, as a share of the teacher's,
and the combinations within 25 %.

The variants are made with the functions ``build_student`` calls for these keys, on copies of
one built student; one combination is also built from its config and its count checked. Writes
a JSON (``--out``) and prints the tables.

    .venv/bin/python benchmarks/compact_student_init.py
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dsmd.config import load_config, packaged_config
from dsmd.data.datasets import load_split
from dsmd.data.images import load_image
from dsmd.models import DualEncoder, build_student
from dsmd.models.low_rank import LowRankLinear
from dsmd.models.text import keep_first_layers
from dsmd.models.text_compact import factorize_word_embeddings, keep_first_positions

TEXT_RANKS = (16, 32, 64, 128, 384)
HEAD_RANKS = (64, 128, 256, 1000)
POSITIONS = 32
BUDGET = 0.25
OVERRIDES = ["student.image_size=96", "student.text_layers=6"]  # cut to 1 layer below


def _cos(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean and lowest cosine between the rows of two ``(N, D)`` feature matrices."""
    c = F.cosine_similarity(a.double(), b.double(), dim=-1)
    return {"cos_mean": round(float(c.mean()), 4), "cos_min": round(float(c.min()), 4)}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _energy(rows: torch.Tensor, rank: int) -> float:
    """The share of ``rows``' squared Frobenius norm its best rank-``rank`` approximation keeps."""
    m = rows.detach().double()
    s2 = torch.linalg.eigvalsh(m.T @ m).flip(0).clamp(min=0)
    return round(float(s2[:rank].sum() / s2.sum()), 4)


def demo_train_split(limit: int | None) -> tuple[list, list[str]]:
    """The demo's training images (decoded) and captions."""
    data = load_split(load_config(packaged_config("demo")).data, "train")
    n = data.num_images if limit is None else min(limit, data.num_images)
    images = [load_image(p) for p in data.image_paths[:n]]
    captions = [c for c, i in zip(data.captions, data.caption_image, strict=True) if i < n]
    return images, captions


@torch.no_grad()
def text_rows(student6: DualEncoder, captions: list[str]) -> tuple[list[dict], dict]:
    """Per text rank and depth: parameters and cosine to the unfactorised tower of that depth."""
    tokens = student6.tokenize(captions)

    def encode(tower) -> torch.Tensor:
        return F.normalize(student6.text_proj(tower(**tokens)), dim=-1)

    towers = {6: student6.text.eval()}
    towers[1] = copy.deepcopy(towers[6])
    keep_first_layers(towers[1].model, 1)
    reference = {layers: encode(tower) for layers, tower in towers.items()}
    rows, whole = [], {layers: _count(tower) for layers, tower in towers.items()}
    for layers, rank in itertools.product((1, 6), TEXT_RANKS):
        tower = copy.deepcopy(towers[layers])
        factorize_word_embeddings(tower.model, rank)
        out = encode(tower)
        energy = _energy(towers[layers].model.get_input_embeddings().weight, rank)
        row = {"layers": layers, "rank": rank, "energy": energy, "text_params": _count(tower)}
        row.update(_cos(out, reference[layers]))
        if layers == 1:
            row["cos_to_6_layers_mean"] = _cos(out, reference[6])["cos_mean"]
        rows.append(row)
    cut = copy.deepcopy(towers[1])
    keep_first_positions(cut.model, POSITIONS)
    whole["positions_saved"] = whole[1] - _count(cut)
    whole["cos_to_6_layers_mean"] = _cos(reference[1], reference[6])["cos_mean"]
    return rows, whole


@torch.no_grad()
def vision_rows(student: DualEncoder, images: list) -> list[dict]:
    """Per head rank: parameters of the vision tower and cosine to the unfactorised image features."""
    transform = student.image_transform(train=False)
    pixels = torch.stack([transform(im) for im in images])
    vision, pooled = student.vision.eval(), []
    hook = vision.classifier.register_forward_pre_hook(lambda _m, args: pooled.append(args[0]))
    reference = torch.cat([student.encode_images(chunk) for chunk in pixels.split(64)])
    hook.remove()
    pooled = torch.cat(pooled)  # (N, 1280): the pooled features the classifier sees
    head_params = _count(vision.classifier)
    rows = []
    for rank in HEAD_RANKS:
        head = LowRankLinear.from_linear(vision.classifier, rank)
        out = F.normalize(student.vision_proj(torch.softmax(head(pooled), dim=-1)), dim=-1)
        params = _count(vision) - head_params + _count(head)
        energy = _energy(vision.classifier.weight, rank)
        rows.append({"rank": rank, "energy": energy, "vision_params": params, **_cos(out, reference)})
    return rows


def combinations(student: DualEncoder, text: list[dict], whole_text: dict, vision: list[dict], teacher: int) -> list:
    """Every (text rank, head rank, positions) of the 1-layer student: parameters and teacher share."""
    heads = [{"rank": None, "vision_params": _count(student.vision), "cos_mean": 1.0}, *vision]
    texts = [{"rank": None, "text_params": whole_text[1], "cos_mean": 1.0}]
    texts += [r for r in text if r["layers"] == 1]
    projections = _count(student.vision_proj) + _count(student.text_proj)
    rows = []
    for t, v, positions in itertools.product(texts, heads, (None, POSITIONS)):
        params = v["vision_params"] + t["text_params"] + projections
        params -= whole_text["positions_saved"] if positions else 0
        rows.append(
            {
                "text_embedding_rank": t["rank"],
                "vision_head_rank": v["rank"],
                "text_positions": positions,
                "params": params,
                "teacher_share": round(params / teacher, 4),
                "text_cos_mean": t["cos_mean"],
                "image_cos_mean": v["cos_mean"],
            }
        )
    return rows


def check_one(rows: list[dict], overrides: list[str]) -> dict:
    """Build the largest combination within budget from its config; its count must match."""
    fits = [r for r in rows if r["teacher_share"] <= BUDGET and r["text_embedding_rank"] and r["vision_head_rank"]]
    best = max(fits, key=lambda r: r["params"])
    keys = ("text_embedding_rank", "vision_head_rank", "text_positions")
    cfg = load_config("offline_student_d", [*overrides, *(f"student.{k}={best[k]}" for k in keys)])
    built = build_student(cfg.student, 384).num_parameters()
    if built != best["params"]:
        raise SystemExit(f"parameter count mismatch for {best}: built {built}")
    return {**{k: best[k] for k in keys}, "built_params": built}


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def show(result: dict) -> None:
    m, whole = 1e6, result["whole_text"]
    print(f"\nText: {result['captions']} captions; rank 384 is full rank (V x H = 30522 x 384)")
    rows = [[1, "whole", "1", f"{whole[1] / m:.2f}M", 1.0, 1.0, whole["cos_to_6_layers_mean"]]]
    rows += [[6, "whole", "1", f"{whole[6] / m:.2f}M", 1.0, 1.0, 1.0]]
    for r in result["text"]:
        cos6 = r.get("cos_to_6_layers_mean", "")
        rows.append(
            [r["layers"], r["rank"], r["energy"], f"{r['text_params'] / m:.2f}M", r["cos_mean"], r["cos_min"], cos6]
        )
    print(_table(["layers", "rank", "energy kept", "text params", "cos mean", "cos min", "cos to 6 layers"], rows))
    print(f"\nImage head: {result['images']} images at 96 px; rank 1000 is full rank (1000 x 1280)")
    rows = [["whole", "1", f"{result['whole_vision'] / m:.2f}M", 1.0, 1.0]]
    rows += [
        [r["rank"], r["energy"], f"{r['vision_params'] / m:.2f}M", r["cos_mean"], r["cos_min"]]
        for r in result["vision"]
    ]
    print(_table(["rank", "energy kept", "vision params", "cos mean", "cos min"], rows))
    fits = sorted((r for r in result["combinations"] if r["teacher_share"] <= BUDGET), key=lambda r: -r["params"])
    print(
        f"\nWithin {BUDGET:.0%} of the teacher's {result['teacher_params'] / m:.2f}M (student: "
        f"{result['student_params'] / m:.2f}M, {result['student_params'] / result['teacher_params']:.1%}; 1 text layer)"
    )
    keys = ("text_embedding_rank", "vision_head_rank", "text_positions")
    rows = [
        [
            *(r[k] for k in keys),
            f"{r['params'] / m:.2f}M",
            f"{r['teacher_share']:.1%}",
            r["text_cos_mean"],
            r["image_cos_mean"],
        ]
        for r in fits[:10]
    ]
    print(_table([*keys, "params", "of teacher", "text cos", "image cos"], rows))
    print(f"\nchecked by building from the config: {result['checked']}; {result['seconds']} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, help="use the first N training images (default: all)")
    p.add_argument("--out", default="benchmarks/results/compact_student_init.json")
    args = p.parse_args()
    t0 = time.perf_counter()
    torch.set_grad_enabled(False)
    from dsmd.teachers import OfflineTeacher

    teacher = OfflineTeacher()
    prompts, teacher_params = teacher.prompt_embeddings.detach().clone(), teacher.num_parameters()
    del teacher
    cfg = load_config("offline_student_d", OVERRIDES)
    student = build_student(cfg.student, 384, vision_proj_init=prompts).eval()
    images, captions = demo_train_split(args.limit)
    text, whole_text = text_rows(student, captions)
    vision = vision_rows(student, images)
    keep_first_layers(student.text.model, 1)  # the 1-layer student of offline_student_d
    combos = combinations(student, text, whole_text, vision, teacher_params)
    result = {
        "student": "offline_student_d at 96 px (1 text layer; the 6-layer rows isolate the embeddings)",
        "data": "dsmd demo's train split (Tux Paint stamps)",
        "images": len(images),
        "captions": len(captions),
        "teacher_params": teacher_params,
        "student_params": student.num_parameters(),
        "whole_text": whole_text,
        "whole_vision": _count(student.vision),
        "text": text,
        "vision": vision,
        "combinations": combos,
        "checked": check_one(combos, ["student.image_size=96"]),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    show(result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
