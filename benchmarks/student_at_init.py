"""Retrieval of the demo student before any distillation (its initial weights), on val and test.

Shows what distillation adds on top of the student's starting point (pretrained towers and,
in the demo config, the teacher-initialised image head). Overrides as for ``dsmd train``.

    .venv/bin/python benchmarks/student_at_init.py
"""

from __future__ import annotations

import json
import sys

import torch

from dsmd.config import load_config, packaged_config
from dsmd.data.datasets import load_dataset
from dsmd.evaluation.student_eval import evaluate_student
from dsmd.models import build_student
from dsmd.training.setup import vision_proj_init


def main() -> None:
    cfg = load_config(packaged_config("demo"), sys.argv[1:])
    init = vision_proj_init(cfg)  # the offline teacher's prompt matrix, as training starts from it
    torch.manual_seed(cfg.train.seed)
    student = build_student(cfg.student, 384, vision_proj_init=init)  # the offline teacher's width
    data = load_dataset(cfg.data)
    for split in ("val", "test"):
        metrics = evaluate_student(student, data[split], cfg.train.eval_batch_size, torch.device("cpu"))
        print(json.dumps({"split": split, **{k: round(v, 2) for k, v in metrics.items()}}))


if __name__ == "__main__":
    main()
