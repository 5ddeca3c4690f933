"""The training loop: one loop for one process and for ``torchrun``'s many, read top to bottom.

Per optimiser step (:mod:`dsmd.training.step`): the student encodes this rank's part of the
step's pairs; the teacher's features of the same pairs are read from the feature store by
index; student and teacher features are gathered from all ranks, so the enabled DSMD losses,
the queue and the balancer see the whole global batch; AdamW steps; the batch's teacher
features enter the queue. Which pairs form each batch does not depend on the number of
processes (:mod:`dsmd.training.sampling`). Per epoch: validation RSUM, a checkpoint
(``last.pt``, and ``best.pt`` when RSUM improves); every ``checkpoint_every`` steps also a
mid-epoch ``last.pt``. Every step's raw losses, weights, rates, scales and gradient norm go to
``steps.jsonl``. Logging, validation and checkpoints happen on rank 0; the other ranks wait at
a barrier, so ``train.dist_timeout_s`` must exceed a validation pass.

Under ``torchrun`` the result is that of one process with the same global batch, up to
float rounding, with two exceptions: dropout masks are drawn per rank, and BatchNorm layers
(EfficientNet) normalise with each rank's own batch statistics, as in any DDP run. With
``data.streaming`` each rank reads its own shards (not batch-exact with one process); a rank
whose shards run out first pads until the others are done, so every pair is still trained on.
With ``data.teacher_in_shards`` as well, the teacher's rows come with the streamed samples
(the ``teacher_*.npy`` members of :mod:`dsmd.store.webdataset_teacher`'s shard copies): the
store's manifest still gives the feature width, the teacher and the per-split counts the data
must have (the copies' fingerprint differs from the original shards'), and no rows are read
from the store.

Resuming (``--resume``) restores model, optimiser, queue, balancer and gradient scaler, and the
position in the epoch as a number of pairs of that epoch's order already trained on: nothing
in the checkpoint depends on the number of processes, so a run may resume on another world
size. Randomness is re-derived from the seed rather than saved: the per-pair augmentation
from (seed, epoch, pair) and the dropout masks of each micro-batch from (seed, step,
micro-batch, rank), so a run resumed on the same world size repeats an uninterrupted one.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Iterator
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
from dsmd.data.loader import ImageCache, PairDataset
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
from dsmd.training.distributed import Distributed, init_distributed
from dsmd.training.sampling import (
    RankBatchSampler,
    SeededPairs,
    collate_keyed,
    collate_streamed,
    epoch_seed,
    micro_batch_size,
)
from dsmd.training.schedule import learning_rate
from dsmd.training.step import (
    DistillationStep,
    autocast_dtype,
    enable_gradient_checkpointing,
    wrap_student,
)


@dataclass
class TrainResult:
    """What a run produced. ``best_*`` are known on rank 0 (``rank``) only."""

    out_dir: Path
    best_checkpoint: Path
    best_rsum: float
    best_epoch: int
    steps: int
    seconds: float
    rank: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    # Dropout masks follow from the position alone, so a resumed run draws the same ones.
    return (((seed * 1_000_003 + step) * 1_009 + micro) * 65_537 + rank) % 2**63


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines written after the checkpoint we resume from."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def _quiet(*_args, **_kwargs) -> None:
    pass


def validation_cache(cfg: RunConfig) -> ImageCache:
    """The image cache of the in-loop validation: decoded images, never downsized copies.

    Validation then sees exactly the pixels ``dsmd eval`` sees, so the val metrics in
    epochs.jsonl are those of ``dsmd eval --split val`` on the checkpoint. (The training
    cache keeps copies downsized to 1.15 x the student's side: cheaper, and random crops
    resample anyway.)
    """
    return ImageCache(max_side=10**9, enabled=cfg.data.cache_images)


def train(cfg: RunConfig, resume: bool = False, resume_overrides: list[str] | None = None,
          progress: bool = True, log=print) -> TrainResult:
    """Distil the student described by ``cfg`` from the feature store ``cfg.store``.

    Under ``torchrun`` every process calls this; it joins the process group from torchrun's
    environment (:func:`~dsmd.training.distributed.init_distributed`) and leaves it at the end.

    Args:
        cfg: the run's configuration. With ``resume`` only its ``out_dir`` is used: the run
            continues with the config saved in its checkpoint, plus ``resume_overrides``
            (e.g. ``["train.epochs=30"]`` to train longer).
        resume: continue from ``out_dir/checkpoints/last.pt`` (possibly mid-epoch).

    Raises:
        DsmdError: the run folder already holds a run (without ``resume``), the store does not
            match the data or teacher, a checkpoint does not match, ``batch_size`` does not
            divide over the processes, the precision is not supported, a rank died.
    """
    out = Path(cfg.out_dir)
    last_path = out / "checkpoints" / "last.pt"
    state = None
    if resume:
        state = load_checkpoint(last_path) if last_path.is_file() else None
        if state is None:
            raise DsmdError(f"nothing to resume in {out}: no checkpoints/last.pt. Start the run without --resume.")
        data = config_to_dict(checkpoint_config(state))
        data["out_dir"] = str(out)  # where the run is now, should its folder have moved
        for override in resume_overrides or []:
            apply_override(data, override)
        cfg = from_dict(RunConfig, data)
    elif last_path.is_file():
        raise DsmdError(f"{out} already holds a run. Pass --resume to continue it, or choose another out_dir=.")
    ctx = init_distributed(cfg.train.device, cfg.train.dist_backend, cfg.train.dist_timeout_s)
    ok = False
    try:
        result = _train(cfg, state, ctx, progress and ctx.is_main, log if ctx.is_main else _quiet)
        ok = True
        return result
    finally:
        ctx.shutdown(clean=ok)


def _epoch_batches(pairs, cfg: RunConfig, ctx: Distributed, micro: int, epoch: int, skip: int):
    """This rank's micro-batches of ``epoch``, after the first ``skip`` (see :mod:`~dsmd.training.sampling`)."""
    seed = epoch_seed(cfg.train.seed, epoch)
    if cfg.data.streaming:
        # Each rank reads its own shards (data.streaming); skipping means reading past them.
        pairs.set_epoch(seed)
        random.seed(seed * 65_537 + ctx.rank)
        loader = DataLoader(pairs, batch_size=micro // ctx.world_size, collate_fn=collate_streamed,
                            num_workers=cfg.data.num_workers,
                            generator=torch.Generator().manual_seed(seed * 65_537 + ctx.rank))
        return itertools.islice(loader, skip, None)
    sampler = RankBatchSampler(len(pairs), micro, cfg.train.seed, epoch, ctx.rank, ctx.world_size, skip)
    return DataLoader(SeededPairs(pairs), batch_sampler=sampler, collate_fn=collate_keyed,
                      num_workers=cfg.data.num_workers)


def _synchronised(batches, ctx: Distributed) -> Iterator[tuple[dict, list[int]]]:
    """This rank's micro-batches with every rank's number of rows, until all ranks are done.

    Streamed shards may run out on some ranks first: those repeat their last micro-batch as
    padding (``real`` all False: no loss, no gradient) while the others still have data.
    """
    previous = None
    for batch in itertools.chain(batches, itertools.repeat(None)):
        if batch is None and previous is not None and ctx.enabled:
            batch = {**previous, "real": torch.zeros_like(previous["real"])}
        previous = batch
        counts = ctx.gather_counts(*((0, 0) if batch is None else (len(batch["real"]), int(batch["real"].sum()))))
        if min(rows for rows, _ in counts) == 0 or sum(real for _, real in counts) == 0:
            return
        yield batch, [rows for rows, _ in counts]


def _check_counts(store: FeatureStore, split: str, data) -> None:
    """``data.teacher_in_shards``: the split has the images and captions the store was built for.

    (The shard copies are larger than the shards the store was extracted from, so their
    fingerprint differs; each sample's teacher rows are checked against its captions as read.)
    """
    info = store.manifest["splits"].get(split)
    if info is None:
        raise DsmdError(f"feature store {store.path} has no split '{split}'. Run `dsmd extract` for this dataset.")
    if (info.get("num_images"), info.get("num_captions")) != (data.num_images, len(data)):
        raise DsmdError(f"feature store {store.path} was built for another dataset: its '{split}' split has "
                        f"{info.get('num_images')} images and {info.get('num_captions')} captions, the data "
                        f"{data.num_images} and {len(data)}. Point data.manifest at the shards written from "
                        "this store, or `store=` at the store they were written from.")


def _train(cfg: RunConfig, state: dict | None, ctx: Distributed, progress: bool, log) -> TrainResult:
    t0 = time.perf_counter()
    tc = cfg.train
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    micro = micro_batch_size(tc.batch_size, tc.grad_accum_steps, ctx.world_size)
    autocast_dtype(tc.precision, ctx.device)  # refuse an unsupported precision before loading anything
    if tc.checkpoint_every is not None and tc.checkpoint_every < 1:
        raise DsmdError(f"train.checkpoint_every must be at least 1 (or null), got {tc.checkpoint_every}")
    in_shards = cfg.data.teacher_in_shards
    if in_shards and not cfg.data.streaming:
        raise DsmdError("data.teacher_in_shards=true reads the teacher's features from the streamed webdataset "
                        "shards, so it needs data.streaming=true (and data.kind=webdataset). Set "
                        "data.streaming=true, or data.teacher_in_shards=false to read them from the store.")
    device = ctx.device
    store = FeatureStore.open(cfg.store)
    store.check_teacher(cfg.teacher.kind, cfg.teacher.name_or_path)
    dataset = load_dataset(cfg.data)
    for split in ("train", "val"):
        if in_shards:
            _check_counts(store, split, dataset[split])
        else:
            store.check_dataset(split, dataset[split].fingerprint())
    # with the teacher in the shards, the store's rows are not read (not even opened)
    train_feats = None if in_shards else store.split("train")

    seed_everything(tc.seed)
    # The student is L2-normalised exactly when its targets are (off: the Table 6 ablation).
    normalized = bool(store.manifest.get("normalized", True))
    student = build_student(cfg.student, store.dim, normalize=normalized,
                            initialise=state is None).to(device)
    if tc.grad_checkpointing:
        enable_gradient_checkpointing(student, log)
    objective = MultiscaleDistillationLoss.from_config(cfg.loss, store.dim).to(device)
    b = cfg.balancer
    balancer = LossBalancer(list(cfg.loss.losses), mode=b.mode, temperature=b.temperature, window=b.window,
                            ema_decay=b.ema_decay, static_weights=b.static_weights, reference_k=b.reference_k)
    heads = [p for n, p in student.named_parameters() if n.startswith(("vision_proj.", "text_proj."))]
    towers = [p for n, p in student.named_parameters() if not n.startswith(("vision_proj.", "text_proj."))]
    optimizer = torch.optim.AdamW([{"params": towers, "lr_scale": 1.0},
                                   {"params": heads, "lr_scale": tc.head_lr_scale}],
                                  lr=tc.lr, weight_decay=tc.weight_decay)
    stepper = DistillationStep(student, wrap_student(student, ctx, tc.compile), objective, balancer, optimizer,
                               train_feats, ctx, tc)

    start_epoch, step, skip_pairs, best_rsum, best_epoch = 0, 0, 0, float("-inf"), -1
    if state is not None:
        try:
            student.load_state_dict(state["model"])
            objective.load_state_dict(state["objective"])
        except RuntimeError as exc:
            raise DsmdError(f"{last_path} does not match the model its config builds ({exc}).") from exc
        optimizer.load_state_dict(state["optimizer"])
        balancer.load_state_dict(state["balancer"])
        stepper.load_state_dict(state.get("trainer", {}))
        start_epoch, step, skip_pairs = state["epoch"], state["step"], state.get("epoch_pairs", 0)
        best_rsum, best_epoch = state["best_rsum"], state["best_epoch"]
        if skip_pairs % tc.batch_size:
            raise DsmdError(f"{last_path} was written {skip_pairs} pairs into epoch {start_epoch + 1}, which is not "
                            f"a whole number of steps of train.batch_size={tc.batch_size}. Resume with the "
                            "batch size it was trained with.")
        if ctx.is_main:
            for name in ("steps.jsonl", "epochs.jsonl"):
                _truncate_log(out / name, step)
        log(f"resuming {out} at epoch {start_epoch + 1}, step {step}"
            + (f" ({skip_pairs} of its pairs done)" if skip_pairs else ""))
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    cache = ImageCache(max_side=round(cfg.student.image_size * 1.15), enabled=cfg.data.cache_images)
    if train_feats is not None and cfg.store_views > train_feats.num_views:
        raise DsmdError(f"store_views={cfg.store_views}, but {cfg.store} holds {train_feats.num_views} views of each "
                        f"training image. Extract with store_views={cfg.store_views} into a new store, or lower it.")
    views = cfg.store_views if tc.augment else 0
    # data.streaming reads webdataset shards in sequence; items index the store (or, with
    # data.teacher_in_shards, carry the teacher rows read from the shards)
    pairs = (StreamingPairDataset(dataset["train"], student.image_transform(train=tc.augment), cache,
                                  views=views, view_transform=student.image_transform(train=False),
                                  shuffle_buffer=cfg.data.shuffle_buffer, teacher_in_shards=in_shards,
                                  dim=store.dim)
             if cfg.data.streaming else
             PairDataset(dataset["train"], student.image_transform(train=tc.augment), cache,
                         views=views, view_transform=student.image_transform(train=False)))
    val_cache = validation_cache(cfg)
    steps_per_epoch = -(-len(pairs) // tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    if tc.max_steps is not None:
        total_steps = min(total_steps, tc.max_steps)
    steps_log = (out / "steps.jsonl").open("a") if ctx.is_main else None
    epochs_log = (out / "epochs.jsonl").open("a") if ctx.is_main else None
    bar = tqdm(total=total_steps, initial=min(step, total_steps), desc="train", disable=not progress)
    metrics: dict | None = state.get("val_metrics") if state else None

    def checkpoint(epochs_done: int, epoch_steps: int) -> None:
        save_checkpoint(last_path, {
            "config": config_to_dict(cfg), "model": student.state_dict(), "optimizer": optimizer.state_dict(),
            "objective": objective.state_dict(), "balancer": balancer.state_dict(),
            "trainer": stepper.state_dict(), "epoch": epochs_done, "epoch_pairs": epoch_steps * tc.batch_size,
            "step": step, "best_rsum": best_rsum, "best_epoch": best_epoch, "val_metrics": metrics,
            "dim": store.dim, "normalized": normalized, "teacher": store.teacher, "dsmd_version": dsmd.__version__,
        })

    try:
        for epoch in range(start_epoch, tc.epochs):
            if tc.max_steps is not None and step >= tc.max_steps:
                break
            lr = learning_rate(tc.lr, epoch, tc.lr_decay_epochs, tc.lr_decay)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            done = skip_pairs // tc.batch_size if epoch == start_epoch else 0  # optimiser steps of this epoch
            micro_total = -(-len(pairs) // micro)
            u = done * tc.grad_accum_steps  # micro-batches of this epoch done
            batches = _synchronised(_epoch_batches(pairs, cfg, ctx, micro, epoch, u), ctx)
            student.train()
            exhausted = False
            while not exhausted:
                item = next(batches, None)
                if item is not None:
                    batch, sizes = item
                    torch.manual_seed(_step_seed(tc.seed, step, stepper.micro_done, ctx.rank))
                    u += 1
                    last = u % tc.grad_accum_steps == 0 or (not cfg.data.streaming and u == micro_total)
                    stepper.micro_batch(batch, sizes, sync=last or cfg.data.streaming)
                    if not last:
                        continue
                else:
                    exhausted = True
                    if stepper.micro_done == 0:
                        break
                    # (streamed data ran out within a step: step on the micro-batches it has)
                record = stepper.optimizer_step()
                step, done = step + 1, done + 1
                if steps_log is not None:
                    steps_log.write(json.dumps({"step": step, "epoch": epoch, "lr": lr, **record}) + "\n")
                    if step % max(1, tc.log_every) == 0:
                        steps_log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{record['total']:.4f}", epoch=epoch, refresh=False)
                if tc.max_steps is not None and step >= tc.max_steps:
                    break
                if tc.checkpoint_every and step % tc.checkpoint_every == 0 and done < steps_per_epoch:
                    if ctx.is_main:
                        steps_log.flush()
                        checkpoint(epoch, done)
                    ctx.barrier("waiting for rank 0's checkpoint")
            complete = exhausted or done >= steps_per_epoch
            if complete:
                balancer.end_epoch()
            if ctx.is_main:
                steps_log.flush()
                metrics = evaluate_student(student, dataset["val"], tc.eval_batch_size, device, val_cache)
                improved = metrics["rsum"] > best_rsum
                if improved:
                    best_rsum, best_epoch = metrics["rsum"], epoch + 1
                epochs_log.write(json.dumps({"step": step, "epoch": epoch + 1, "lr": lr,
                                             **({} if complete else {"epoch_steps": done}),
                                             **{f"val_{k}": v for k, v in metrics.items()}}) + "\n")
                epochs_log.flush()
                checkpoint(epoch + 1, 0) if complete else checkpoint(epoch, done)
                if improved:
                    copy_atomic(last_path, best_path)
                log(f"epoch {epoch + 1}/{tc.epochs}: val RSUM {metrics['rsum']:.1f}"
                    f" (best {best_rsum:.1f} @ {best_epoch}), {time.perf_counter() - t0:.0f}s")
            ctx.barrier("waiting for rank 0's validation and checkpoint")
    except KeyboardInterrupt:
        raise DsmdError(f"interrupted. The last checkpoint is {last_path}; "
                        f"continue with `dsmd train --resume out_dir={out}`.") from None
    finally:
        bar.close()
        for f in (steps_log, epochs_log):
            if f is not None:
                f.close()
    result = TrainResult(out, best_path, best_rsum, best_epoch, step, time.perf_counter() - t0, ctx.rank)
    if ctx.is_main:
        write_json_atomic(out / "result.json", {"best_checkpoint": str(best_path), "best_val_rsum": best_rsum,
                                                "best_epoch": best_epoch, "steps": step,
                                                "seconds": round(result.seconds, 1)})
    return result
