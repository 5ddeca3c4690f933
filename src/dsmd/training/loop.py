"""The training loop: one loop, read top to bottom.

Per step: the student encodes a shuffled batch; the teacher's features of the same pairs are
looked up in the feature store by index; the enabled DSMD losses are computed against the
feature queue; the balancer weights them; AdamW steps; the batch's teacher features enter the
queue. Per epoch: validation RSUM, a checkpoint (``last.pt``, and ``best.pt`` when RSUM
improves). Every step's raw losses, weights, rates and scales go to ``steps.jsonl``.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import dsmd
from dsmd.balancer import LossBalancer
from dsmd.config import RunConfig, apply_override, config_to_dict, from_dict, save_config
from dsmd.data.datasets import load_dataset
from dsmd.data.loader import ImageCache, PairDataset, collate_pairs
from dsmd.data.streaming import StreamingPairDataset
from dsmd.errors import DsmdError
from dsmd.evaluation.student_eval import evaluate_student
from dsmd.losses import MultiscaleDistillationLoss
from dsmd.models import build_student
from dsmd.store.feature_store import FeatureStore, write_json_atomic
from dsmd.training.checkpoint import (
    checkpoint_config,
    copy_atomic,
    load_checkpoint,
    save_checkpoint,
)
from dsmd.training.device import resolve_device
from dsmd.training.schedule import learning_rate


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    best_rsum: float
    best_epoch: int
    steps: int
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Each epoch re-seeds every generator from (seed, epoch): a run resumed at an epoch
    # boundary draws the same shuffles, crops and dropout masks as an uninterrupted one.
    return seed * 1_000_003 + epoch


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines written after the checkpoint we resume from."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def train(cfg: RunConfig, resume: bool = False, resume_overrides: list[str] | None = None,
          progress: bool = True, log=print) -> TrainResult:
    """Distil the student described by ``cfg`` from the feature store ``cfg.store``.

    Args:
        cfg: the run's configuration. With ``resume`` only its ``out_dir`` is used: the run
            continues with the config saved in its checkpoint, plus ``resume_overrides``
            (e.g. ``["train.epochs=30"]`` to train longer).
        resume: continue from ``out_dir/checkpoints/last.pt``.

    Raises:
        DsmdError: the run folder already holds a run (without ``resume``), the store does not
            match the data or teacher, a checkpoint does not match.
    """
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    state = None
    if resume:
        state = load_checkpoint(last_path) if last_path.is_file() else None
        if state is None:
            raise DsmdError(f"nothing to resume in {out}: no checkpoints/last.pt. Start the run without --resume.")
        data = config_to_dict(checkpoint_config(state))
        for override in resume_overrides or []:
            apply_override(data, override)
        cfg = from_dict(RunConfig, data)
    elif last_path.is_file():
        raise DsmdError(f"{out} already holds a run. Pass --resume to continue it, or choose another out_dir=.")

    t0 = time.perf_counter()
    device = resolve_device(cfg.train.device)
    store = FeatureStore.open(cfg.store)
    store.check_teacher(cfg.teacher.kind, cfg.teacher.name_or_path)
    dataset = load_dataset(cfg.data)
    for split in ("train", "val"):
        store.check_dataset(split, dataset[split].fingerprint())
    train_feats = store.split("train")

    seed_everything(cfg.train.seed)
    # The student is L2-normalised exactly when its targets are (off: the Table 6 ablation).
    normalized = bool(store.manifest.get("normalized", True))
    student = build_student(cfg.student, store.dim, normalize=normalized,
                            initialise=state is None).to(device)
    objective = MultiscaleDistillationLoss.from_config(cfg.loss, store.dim).to(device)
    b = cfg.balancer
    balancer = LossBalancer(list(cfg.loss.losses), mode=b.mode, temperature=b.temperature, window=b.window,
                            ema_decay=b.ema_decay, static_weights=b.static_weights, reference_k=b.reference_k)
    heads = [p for n, p in student.named_parameters() if n.startswith(("vision_proj.", "text_proj."))]
    towers = [p for n, p in student.named_parameters() if not n.startswith(("vision_proj.", "text_proj."))]
    optimizer = torch.optim.AdamW([{"params": towers, "lr_scale": 1.0},
                                   {"params": heads, "lr_scale": cfg.train.head_lr_scale}],
                                  lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    start_epoch, step, best_rsum, best_epoch = 0, 0, float("-inf"), -1
    if state is not None:
        try:
            student.load_state_dict(state["model"])
            objective.load_state_dict(state["objective"])
        except RuntimeError as exc:
            raise DsmdError(f"{last_path} does not match the model its config builds ({exc}).") from exc
        optimizer.load_state_dict(state["optimizer"])
        balancer.load_state_dict(state["balancer"])
        start_epoch, step = state["epoch"], state["step"]
        best_rsum, best_epoch = state["best_rsum"], state["best_epoch"]
        for name in ("steps.jsonl", "epochs.jsonl"):
            _truncate_log(out / name, step)
        log(f"resuming {out} after epoch {start_epoch} (step {step})")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    cache = ImageCache(max_side=round(cfg.student.image_size * 1.15), enabled=cfg.data.cache_images)
    available = 0 if train_feats.image_views is None else train_feats.image_views.shape[1]
    if cfg.store_views > available:
        raise DsmdError(f"store_views={cfg.store_views}, but {cfg.store} holds {available} views of each training "
                        f"image. Extract with store_views={cfg.store_views} into a new store, or lower it.")
    views = cfg.store_views if cfg.train.augment else 0
    # (N_i, 1 + V, D): slot 0 the plain image, slot v the teacher's feature of view v - 1
    teacher_views = train_feats.image[:, None]
    if views:
        teacher_views = torch.cat([teacher_views, train_feats.image_views[:, :views]], dim=1)
    # data.streaming reads webdataset shards in sequence; either way items index the store
    pairs = (StreamingPairDataset(dataset["train"], student.image_transform(train=cfg.train.augment), cache,
                                  views=views, view_transform=student.image_transform(train=False),
                                  shuffle_buffer=cfg.data.shuffle_buffer)
             if cfg.data.streaming else
             PairDataset(dataset["train"], student.image_transform(train=cfg.train.augment), cache,
                         views=views, view_transform=student.image_transform(train=False)))
    val_cache = ImageCache(max_side=round(cfg.student.image_size * 1.15), enabled=cfg.data.cache_images)
    steps_per_epoch = -(-len(pairs) // cfg.train.batch_size)
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps is not None:
        total_steps = min(total_steps, cfg.train.max_steps)
    steps_log = (out / "steps.jsonl").open("a")
    epochs_log = (out / "epochs.jsonl").open("a")
    bar = tqdm(total=total_steps, initial=min(step, total_steps), desc="train", disable=not progress)
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            if cfg.train.max_steps is not None and step >= cfg.train.max_steps:
                break
            seed_everything(_epoch_seed(cfg.train.seed, epoch))
            lr = learning_rate(cfg.train.lr, epoch, cfg.train.lr_decay_epochs, cfg.train.lr_decay)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            if cfg.data.streaming:
                pairs.set_epoch(_epoch_seed(cfg.train.seed, epoch))
            loader = DataLoader(pairs, batch_size=cfg.train.batch_size, shuffle=not cfg.data.streaming,
                                collate_fn=collate_pairs,
                                num_workers=cfg.data.num_workers,
                                generator=torch.Generator().manual_seed(_epoch_seed(cfg.train.seed, epoch)))
            student.train()
            for batch in loader:
                tokens = student.tokenize(batch["captions"])
                student_image, student_text = student(batch["pixel_values"].to(device),
                                                      tokens["input_ids"].to(device),
                                                      tokens["attention_mask"].to(device))
                image_ids = batch["image_index"].to(device)
                teacher_image = teacher_views[batch["image_index"], batch["view_index"]].to(device)
                teacher_text = train_feats.text[batch["caption_index"]].to(device)
                losses = objective(student_image, student_text, teacher_image, teacher_text, image_ids)
                total, _ = balancer(losses)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                objective.update_queue(teacher_image, teacher_text, image_ids)
                step += 1
                record = {"step": step, "epoch": epoch, "lr": lr, "total": float(total.detach())}
                record.update({k: float(v.detach()) for k, v in losses.items()})
                record.update(balancer.log_record())
                steps_log.write(json.dumps(record) + "\n")
                bar.update(1)
                if step % max(1, cfg.train.log_every) == 0:
                    steps_log.flush()
                    bar.set_postfix(loss=f"{record['total']:.4f}", epoch=epoch)
                if cfg.train.max_steps is not None and step >= cfg.train.max_steps:
                    break
            balancer.end_epoch()
            steps_log.flush()
            metrics = evaluate_student(student, dataset["val"], cfg.train.eval_batch_size, device, val_cache)
            improved = metrics["rsum"] > best_rsum
            if improved:
                best_rsum, best_epoch = metrics["rsum"], epoch + 1
            epochs_log.write(json.dumps({"step": step, "epoch": epoch + 1, "lr": lr,
                                         **{f"val_{k}": v for k, v in metrics.items()}}) + "\n")
            epochs_log.flush()
            save_checkpoint(last_path, {
                "config": config_to_dict(cfg), "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                "objective": objective.state_dict(), "balancer": balancer.state_dict(), "epoch": epoch + 1,
                "step": step, "best_rsum": best_rsum, "best_epoch": best_epoch, "val_metrics": metrics,
                "dim": store.dim, "normalized": normalized, "teacher": store.teacher, "dsmd_version": dsmd.__version__,
            })
            if improved:
                copy_atomic(last_path, best_path)
            log(f"epoch {epoch + 1}/{cfg.train.epochs}: val RSUM {metrics['rsum']:.1f}"
                f" (best {best_rsum:.1f} @ {best_epoch}), {time.perf_counter() - t0:.0f}s")
    except KeyboardInterrupt:
        raise DsmdError(f"interrupted. Checkpoints up to the last finished epoch are in {ckpt_dir}; "
                        f"continue with `dsmd train --resume out_dir={out}`.") from None
    finally:
        bar.close()
        steps_log.close()
        epochs_log.close()
    result = TrainResult(out, best_path, best_rsum, best_epoch, step, time.perf_counter() - t0)
    write_json_atomic(out / "result.json", {"best_checkpoint": str(best_path), "best_val_rsum": best_rsum,
                                            "best_epoch": best_epoch, "steps": step,
                                            "seconds": round(result.seconds, 1)})
    return result
