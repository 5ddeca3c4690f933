"""Setting up a training run: each function builds one part and returns it; :func:`setup`
assembles them into a :class:`Run` (restoring a checkpoint's state when resuming).

Order matters for reproducibility: the seed is set right before the student is built, so its
random parts (fresh projections) do not depend on anything loaded before.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import Dataset

import dsmd
from dsmd.balancer import LossBalancer
from dsmd.config import RunConfig, config_to_dict
from dsmd.config.unpaired import reads_pools, uses_unpaired
from dsmd.data.batches import PairCollator
from dsmd.data.datasets import CaptionedImages, load_dataset
from dsmd.data.loader import ImageCache, PairDataset
from dsmd.data.streaming import StreamingPairDataset
from dsmd.errors import DsmdError
from dsmd.losses import MultiscaleDistillationLoss
from dsmd.models import DualEncoder, build_student
from dsmd.runtime.distributed import Distributed
from dsmd.runtime.signals import StopRequest
from dsmd.store import FeatureStore
from dsmd.store.manifest import UNPAIRED_TABLES
from dsmd.training.checkpoint import load_weights
from dsmd.training.run_files import RunFiles
from dsmd.training.sampling import micro_batch_size
from dsmd.training.step import DistillationStep, autocast_dtype
from dsmd.training.text_warmup import warm_up_text
from dsmd.training.unpaired import UnpairedStream, build_unpaired, open_pools
from dsmd.training.weight_average import average_state, restore_average, weight_average

HEADS = ("vision_proj.", "text_proj.")


@dataclass
class Position:
    """Where a run is: ``epoch`` epochs finished, ``epoch_steps`` optimiser steps into the next."""

    epoch: int = 0
    epoch_steps: int = 0


@dataclass
class Best:
    """The best validation so far (``epoch`` 1-based; -1: none yet)."""

    rsum: float = float("-inf")
    epoch: int = -1


@dataclass
class Run:
    """Everything a training run holds; :func:`~dsmd.training.recipe.fit` drives it."""

    cfg: RunConfig
    ctx: Distributed
    store: FeatureStore
    data: dict[str, CaptionedImages]
    student: DualEncoder
    objective: MultiscaleDistillationLoss
    balancer: LossBalancer
    optimizer: torch.optim.Optimizer
    stepper: DistillationStep
    pairs: Dataset
    collate: PairCollator
    micro: int
    files: RunFiles
    log: Callable[[str], None]
    val_cache: ImageCache
    position: Position = field(default_factory=Position)
    best: Best = field(default_factory=Best)
    val_metrics: dict | None = None
    stop: StopRequest = field(default_factory=StopRequest)
    unpaired: UnpairedStream | None = None  # the pools' items of each micro-batch, with u_* losses
    average: AveragedModel | None = None  # the moving average of the weights (train.ema_decay)

    @property
    def evaluated(self) -> DualEncoder:
        """The student that validation scores and checkpoints deliver: the average, when there is one."""
        return self.student if self.average is None else self.average.module

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.pairs) // self.cfg.train.batch_size)

    def state(self, position: Position) -> dict[str, Any]:
        """The checkpoint of the run at ``position`` (see :mod:`dsmd.training.checkpoint`)."""
        return {
            "config": config_to_dict(self.cfg),
            **average_state(self.average, self.student),
            "optimizer": self.optimizer.state_dict(),
            "objective": self.objective.state_dict(),
            "balancer": self.balancer.state_dict(),
            "trainer": self.stepper.state_dict(),
            "epoch": position.epoch,
            "epoch_pairs": position.epoch_steps * self.cfg.train.batch_size,
            "step": self.stepper.steps,
            "best_rsum": self.best.rsum,
            "best_epoch": self.best.epoch,
            "val_metrics": self.val_metrics,
            "dim": self.store.dim,
            "normalized": self.student.normalize,
            "teacher": self.store.teacher,
            "dsmd_version": dsmd.__version__,
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_counts(store: FeatureStore, split: str, data: CaptionedImages) -> None:
    """``data.teacher_in_shards``: the split has the images and captions the store was built for.

    (The shard copies are larger than the shards the store was extracted from, so their
    fingerprint differs; each sample's teacher rows are checked against its captions as read.)
    """
    info = store.manifest["splits"].get(split)
    if info is None:
        raise DsmdError(f"feature store {store.path} has no split '{split}'. Run `dsmd extract` for this dataset.")
    if (info.get("num_images"), info.get("num_captions")) != (data.num_images, len(data)):
        raise DsmdError(
            f"feature store {store.path} was built for another dataset: its '{split}' split has "
            f"{info.get('num_images')} images and {info.get('num_captions')} captions, the data "
            f"{data.num_images} and {len(data)}. Point data.manifest at the shards written from "
            "this store, or `store=` at the store they were written from."
        )


def open_store(cfg: RunConfig, ctx: Distributed, progress: bool) -> tuple[FeatureStore, dict[str, CaptionedImages]]:
    """The feature store and the train / val data, checked against each other.

    The store's train and val files are verified (sha256, finite values) unless they were at
    this location before; under torchrun an unverified store is refused with the command that
    verifies it. With ``data.teacher_in_shards`` the store is read for its manifest only. With
    ``u_*`` losses the data also holds the pools by table name (``unpaired_image``,
    ``unpaired_text``), checked and verified the same way (:func:`~dsmd.training.unpaired.open_pools`).
    """
    store = FeatureStore.open(cfg.store)
    store.check_teacher(cfg.teacher.kind, cfg.teacher.name_or_path)
    dataset = load_dataset(cfg.data)
    for split in ("train", "val"):
        if cfg.data.teacher_in_shards:
            _check_counts(store, split, dataset[split])
        else:
            store.check_dataset(split, dataset[split].fingerprint())
    if not cfg.data.teacher_in_shards:
        store.verify(["train"], allow_hashing=not ctx.enabled, progress=progress)
    train_views = store.split("train").num_views if not cfg.data.teacher_in_shards else cfg.store_views
    if cfg.store_views > train_views:
        raise DsmdError(
            f"store_views={cfg.store_views}, but {cfg.store} holds {train_views} views of each "
            f"training image. Extract with store_views={cfg.store_views} into a new store, or lower it."
        )
    data = {"train": dataset["train"], "val": dataset["val"]}
    if reads_pools(cfg):
        data.update(open_pools(cfg, store, dataset, ctx, progress))
    return store, data


def vision_proj_init(cfg: RunConfig) -> torch.Tensor | None:
    """The initial ``vision_proj`` weight ``cfg.student.vision_proj_init`` asks for (None: PyTorch's)."""
    if cfg.student.vision_proj_init != "imagenet_prompts":
        return None
    from dsmd.teachers.offline import imagenet_prompt_embeddings

    return imagenet_prompt_embeddings()


def build_run_student(cfg: RunConfig, store: FeatureStore, fresh: bool, device: torch.device) -> DualEncoder:
    """The student, L2-normalised exactly when its targets are (off: the Table 6 ablation)."""
    init = vision_proj_init(cfg) if fresh else None
    seed_everything(cfg.train.seed)
    student = build_student(cfg.student, store.dim, normalize=bool(store.manifest["normalized"]), vision_proj_init=init)
    return student.to(device)


def text_warmup(
    cfg: RunConfig, store: FeatureStore, data: dict[str, CaptionedImages], student: DualEncoder, progress: bool, log
) -> None:
    """``train.text_warmup_epochs`` of the text tower alone on the caption pool and the training
    captions (:mod:`dsmd.training.text_warmup`), on a fresh student."""
    pool = UNPAIRED_TABLES["text"]
    captions = list(data[pool].captions) + list(data["train"].captions)
    targets = torch.cat([store.split(pool).text, store.split("train").text])
    tc = cfg.train
    warm_up_text(student, captions, targets, tc.text_warmup_epochs, tc.text_warmup_lr, tc.seed, progress, log)


def build_optimizer(cfg: RunConfig, student: nn.Module) -> torch.optim.Optimizer:
    """AdamW; the two projections at ``train.head_lr_scale`` times the learning rate."""
    heads = [p for n, p in student.named_parameters() if n.startswith(HEADS)]
    towers = [p for n, p in student.named_parameters() if not n.startswith(HEADS)]
    return torch.optim.AdamW(
        [{"params": towers, "lr_scale": 1.0}, {"params": heads, "lr_scale": cfg.train.head_lr_scale}],
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
    )


def build_balancer(cfg: RunConfig) -> LossBalancer:
    b = cfg.balancer
    return LossBalancer(
        list(cfg.loss.losses),
        mode=b.mode,
        temperature=b.temperature,
        window=b.window,
        ema_decay=b.ema_decay,
        static_weights=b.static_weights,
        reference_k=b.reference_k,
        priors=b.priors,
    )


def validation_cache(cfg: RunConfig) -> ImageCache:
    """The image cache of the in-loop validation: decoded images, never downsized copies.

    Validation then sees exactly the pixels ``dsmd eval`` sees, so the val metrics in
    epochs.jsonl are those of ``dsmd eval --split val`` on the checkpoint. (The training
    cache keeps copies downsized to 1.15 x the student's side: cheaper, and random crops
    resample anyway.)
    """
    return ImageCache(max_side=10**9, enabled=cfg.data.cache_images)


def build_pairs(cfg: RunConfig, store: FeatureStore, data: CaptionedImages, student: DualEncoder) -> Dataset:
    """The training pairs with their teacher targets (random access, or streamed shards)."""
    cache = ImageCache(max_side=round(cfg.student.image_size * 1.15), enabled=cfg.data.cache_images)
    views = cfg.store_views if cfg.train.augment else 0
    transform, plain = student.image_transform(train=cfg.train.augment), student.image_transform(train=False)
    if cfg.data.streaming:
        targets = None if cfg.data.teacher_in_shards else store.split("train")
        return StreamingPairDataset(
            data,
            transform,
            targets,
            cache,
            views=views,
            view_transform=plain,
            shuffle_buffer=cfg.data.shuffle_buffer,
            dim=store.dim,
        )
    return PairDataset(data, transform, store.split("train"), cache, views=views, view_transform=plain)


def enable_gradient_checkpointing(student: nn.Module, log: Callable[[str], None]) -> list[str]:
    """Recompute the transformers towers' activations in the backward pass (less memory).

    Towers that cannot (EfficientNet) run as they are, with a log line.

    Returns:
        The towers switched to checkpointing (``"vision"``, ``"text"``).
    """
    done = []
    for name in ("vision", "text"):
        model = getattr(getattr(student, name), "model", None)
        if model is not None and getattr(model, "supports_gradient_checkpointing", False):
            # Non-reentrant: works with DDP and with inputs that need no gradient. transformers
            # renamed the switch (the old name warns); either takes torch.utils.checkpoint's kwargs.
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            done.append(name)
        else:
            log(
                f"train.grad_checkpointing: the {name} tower ({type(getattr(student, name)).__name__}) "
                "does not support it; it runs without"
            )
    return done


def wrap_student(student: nn.Module, ctx: Distributed, compile_: bool) -> nn.Module:
    """The module the loop calls: ``student``, optionally compiled, in DDP under torchrun.

    ``student`` itself stays the one to save, evaluate and tokenize with: it shares its
    parameters with the wrapper.
    """
    model = torch.compile(student) if compile_ else student
    if ctx.enabled:
        with ctx.guard("starting DDP (broadcasting rank 0's parameters)"):
            model = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=False,
            )
    return model


def restore(run: Run, state: dict[str, Any], where: Path) -> None:
    """Put a checkpoint's state into the run's parts."""
    restore_average(run.average, run.student, state, str(where))
    load_weights(
        run.objective, state["objective"], f"{where} (its loss module: another loss.queue_size or loss.losses?)"
    )
    run.optimizer.load_state_dict(state["optimizer"])
    run.balancer.load_state_dict(state["balancer"])
    run.stepper.load_state_dict(state.get("trainer", {}))
    run.stepper.steps = state["step"]
    epoch_pairs = state.get("epoch_pairs", 0)
    if epoch_pairs % run.cfg.train.batch_size:
        raise DsmdError(
            f"{where} was written {epoch_pairs} pairs into epoch {state['epoch'] + 1}, which is not a "
            f"whole number of steps of train.batch_size={run.cfg.train.batch_size}. Resume with the "
            "batch size it was trained with."
        )
    run.position = Position(state["epoch"], epoch_pairs // run.cfg.train.batch_size)
    run.best = Best(state["best_rsum"], state["best_epoch"])
    run.val_metrics = state.get("val_metrics")


def setup(cfg: RunConfig, state: dict[str, Any] | None, ctx: Distributed, progress: bool, log) -> Run:
    """Build the run ``cfg`` describes on this rank (resuming ``state`` when given)."""
    tc = cfg.train
    micro = micro_batch_size(tc.batch_size, tc.grad_accum_steps, ctx.world_size)
    autocast_dtype(tc.precision, ctx.device)  # refuse an unsupported precision before loading anything
    store, data = open_store(cfg, ctx, progress)
    student = build_run_student(cfg, store, state is None, ctx.device)
    if state is None and tc.text_warmup_epochs:
        text_warmup(cfg, store, data, student, progress and ctx.is_main, log)
    if tc.grad_checkpointing:
        enable_gradient_checkpointing(student, log)
    average = weight_average(student, tc.ema_decay)  # a copy of the student before DDP wraps it
    objective = MultiscaleDistillationLoss.from_config(cfg.loss, store.dim).to(ctx.device)
    balancer, optimizer = build_balancer(cfg), build_optimizer(cfg, student)
    stepper = DistillationStep(student, wrap_student(student, ctx, tc.compile), objective, balancer, optimizer, ctx, tc)
    files = RunFiles(cfg.out_dir, main=ctx.is_main, log=log)
    run = Run(
        cfg,
        ctx,
        store,
        data,
        student,
        objective,
        balancer,
        optimizer,
        stepper,
        build_pairs(cfg, store, data["train"], student),
        PairCollator(student.caption_tokenizer()),
        micro,
        files,
        log,
        validation_cache(cfg),
        average=average,
    )
    if uses_unpaired(cfg):
        run.unpaired = build_unpaired(cfg, store, data, student, run.steps_per_epoch, ctx)
    if state is not None:
        restore(run, state, files.last)
        log(
            f"resuming {cfg.out_dir} at epoch {run.position.epoch + 1}, step {stepper.steps}"
            + (f" ({run.position.epoch_steps * tc.batch_size} of its pairs done)" if run.position.epoch_steps else "")
        )
    files.begin(cfg, stepper.steps if state is not None else None, (state or {}).get("resume_changes"))
    return run
