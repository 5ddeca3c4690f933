"""Overrides for whole runs on the tiny test models (shared by conftest and module fixtures)."""

from __future__ import annotations

from pathlib import Path

# The demo config's compact student and recipe do not fit the tiny models: back to whole tables,
# DSMD's four losses and no caption pool or text warm-up (for every run on the tiny models that
# starts from the demo config).
NOT_COMPACT = [
    "student.vision_head_rank=null",
    "student.text_embedding_rank=null",
    "student.text_positions=null",
    "loss.losses=[cd, fd, sd, hnd]",
    "balancer.priors={}",
    "data.unpaired_texts.kind=none",
    "data.unpaired_texts.path=null",
    "train.text_warmup_epochs=0",
    "train.unpaired_ratio=1",
]


def tiny_run_overrides(tiny_models: dict[str, str], manifest: str, root: Path) -> list[str]:
    """``key=value`` overrides for a whole run on tiny models, writing under ``root``."""
    return [
        "data.kind=manifest",
        f"data.manifest={manifest}",
        "data.val_fraction=0.25",
        "data.test_fraction=0.25",
        "teacher.kind=hf_clip",
        f"teacher.name_or_path={tiny_models['clip']}",
        "teacher.batch_size=8",
        f"student.vision={tiny_models['vit']}",
        "student.image_size=32",
        "student.vision_head=features",
        "student.vision_proj_init=default",
        "store_views=0",
        f"student.text={tiny_models['bert']}",
        "student.text_layers=1",
        "student.max_text_length=16",
        *NOT_COMPACT,
        "loss.queue_size=16",
        "train.epochs=2",
        "train.batch_size=8",
        "train.lr=1e-3",
        "train.lr_decay_epochs=[1]",
        "train.eval_batch_size=16",
        "train.device=cpu",
        f"store={root / 'store'}",
        f"out_dir={root / 'run'}",
    ]


def write_base_config(path: Path, overrides: list[str]) -> Path:
    """A YAML config at ``path`` holding ``key=value`` overrides as nested sections (a sweep's base)."""
    import yaml

    base: dict = {}
    for override in overrides:
        key, value = override.split("=", 1)
        node = base
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(base))
    return path
