"""Import teacher features computed elsewhere into a feature store.

A user who already ran a teacher (the DSMD authors' published BEiT-3 features, their own
CLIP features) turns them into a normal dsmd store (the files and manifest ``dsmd extract``
writes) and trains as usual with ``teacher.kind=imported teacher.name_or_path=SOURCE``.

Formats (by file extension):

- ``.npy``: one array, memory-mapped. ``.npz``: named arrays.
- ``.pt`` / ``.pth``: a tensor, or a (nested) dict of tensors, read with
  ``torch.load(weights_only=True, mmap=True)``.
- ``.safetensors``: named tensors, read a block of rows at a time (``safe_open``).
- ``.pkl`` / ``.pickle``: numpy arrays, torch tensors (also ones saved on a GPU) or lists of
  rows, alone or in a (nested) dict. Unpickling runs code stored in the file, so pickles (and
  ``.pt`` files holding anything but tensors) are read only with ``trust_pickle=True``
  (``--trust-pickle``).

Nested dicts are flattened with ``/`` (``{"train": {"image": x}}`` is entry ``train/image``).

Where the features are (``SOURCE`` is ``teacher.name_or_path``):

- a folder with, per split, ``{split}.EXT`` (one file with an image and a text entry) or
  ``{split}_image.EXT`` and ``{split}_text.EXT`` (one file each);
- one file holding every split: entries ``{split}/image`` and ``{split}/text``;
- files given per split (``files={"train": [IMAGE_FILE, TEXT_FILE]}``, or one file with both
  entries; CLI ``--train IMAGE [TEXT]``). The store's source is then ``teacher.name_or_path``
  if set, else the folder that holds the files.

Entry names: the image features are the entry named ``image``, ``img_feats`` or
``image_feats``; the text features ``text``, ``txt_feats`` or ``text_feats`` (each may carry
the split prefix); ``image_key`` / ``text_key`` name another. A file given for one modality
alone may hold a single array of any name.

Rows: text features have one row per caption, in the dataset's caption order. Image features
have one row per image (the dataset's image order), or one row per caption with each image's
row repeated for each of its captions, as the DSMD authors' code saves them
(:data:`DSMD_LAYOUT`). The second layout is recognised when the rows equal the captions and
the split has fewer images than captions; it is reduced to one row per image (the row of the
image's first caption) after checking that all rows of an image agree: ``|a - b|_2 <=
tolerance * |a|_2`` with ``tolerance`` 1e-3 by default, which float16 storage (relative
error 2^-11 per element) passes and rows of different images do not.

The store is written as :func:`dsmd.store.feature_store.write_split` writes an extracted one
(``store_dtype``; ``store_shard_rows`` shards, listed with their sha256 in the manifest).

Splits: ``train`` and ``val`` are required (training checks both) unless the dataset's split
is empty; ``test`` is imported when present. Features are checked (2-D, float, finite, the
image and text widths agree across splits, row counts match the dataset) and L2-normalised
unless ``teacher.normalize=false``; the manifest records whether the input already was.

An import that will write (no store yet, or ``overwrite``) holds the store's lock, as
``dsmd extract`` does (:mod:`dsmd.runtime.lock`): a second writer of the store is refused at once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dsmd.config import RunConfig, config_to_dict
from dsmd.data.datasets import SPLITS, CaptionedImages, load_dataset
from dsmd.errors import DsmdError
from dsmd.extraction.feature_files import SourceArray, read_entries
from dsmd.extraction.feature_locations import pick_entry, resolve_files
from dsmd.runtime.files import check_writable
from dsmd.runtime.lock import exclusive_folder
from dsmd.store import FeatureStore, SplitFeatures, StoreWriter
from dsmd.store.manifest import FORMAT_VERSION, MANIFEST, describe_mismatch, read_manifest
from dsmd.store.safetensors_mmap import file_sha256

IMAGE_KEYS = ("image", "img_feats", "image_feats")
TEXT_KEYS = ("text", "txt_feats", "text_feats")
DEFAULT_TOLERANCE = 1e-3
DSMD_LAYOUT = "per_caption"
# |norm - 1| below this counts as "already unit-norm" (bfloat16 storage errs by ~4e-3).
UNIT_NORM_ATOL = 1e-2
# Rows read at once: bounds the memory a large memory-mapped input costs beyond the output.
BLOCK_ROWS = 65536


# -- checking and converting one split -----------------------------------------------------------


@dataclass
class _SplitPlan:
    split: str
    data: CaptionedImages
    image: SourceArray
    text: SourceArray
    layout: str  # "per_image" or DSMD_LAYOUT


def _check_shape(arr: SourceArray, split: str) -> None:
    if len(arr.shape) != 2:
        raise DsmdError(f"{arr.where}: expected a (rows, D) array for split '{split}', got shape {arr.shape}.")
    if not arr.is_float():
        raise DsmdError(f"{arr.where}: expected floating-point features, got dtype {arr.dtype}.")


def _plan_split(split: str, data: CaptionedImages, image: SourceArray, text: SourceArray) -> _SplitPlan:
    """Check shapes and row counts against the dataset split; decide the image layout."""
    _check_shape(image, split)
    _check_shape(text, split)
    if image.shape[1] != text.shape[1]:
        raise DsmdError(
            f"split '{split}': image features are {image.shape[1]}-d ({image.where}) but text "
            f"features {text.shape[1]}-d ({text.where}). Both must come from one teacher."
        )
    n_images, n_captions = data.num_images, len(data)
    if text.shape[0] != n_captions:
        raise DsmdError(
            f"{text.where} has {text.shape[0]} rows of text features, but split '{split}' of the dataset "
            f"has {n_captions} captions. Give one row per caption, in the dataset's order (check data.*)."
        )
    if image.shape[0] == n_images:
        layout = "per_image"
    elif image.shape[0] == n_captions and n_images < n_captions:
        layout = DSMD_LAYOUT
    else:
        raise DsmdError(
            f"{image.where} has {image.shape[0]} rows of image features, but split '{split}' of the dataset "
            f"has {n_images} images ({n_captions} captions). Give one row per image, or one per caption "
            "(each image's row repeated for its captions, as DSMD saves them)."
        )
    return _SplitPlan(split, data, image, text, layout)


def _check_finite(block: torch.Tensor, arr: SourceArray, start: int) -> None:
    bad = ~torch.isfinite(block).all(dim=1)
    if bad.any():
        row = start + int(bad.nonzero()[0, 0])
        raise DsmdError(f"{arr.where}: row {row} is not finite (NaN or inf). Recompute or drop those features.")


def _read_rows(arr: SourceArray, out: torch.Tensor) -> None:
    """Copy every row of ``arr`` into ``out (N, D)``, checking it is finite."""
    for start in range(0, arr.shape[0], BLOCK_ROWS):
        block = arr.block(start, min(start + BLOCK_ROWS, arr.shape[0]))
        _check_finite(block, arr, start)
        out[start : start + len(block)] = block


def _dedupe_image_rows(arr: SourceArray, caption_image: torch.Tensor, n_images: int, tolerance: float) -> torch.Tensor:
    """One row per image from per-caption rows, refusing images whose rows disagree.

    Args:
        arr: ``(N_t, D)`` image features, row ``j`` the feature of caption ``j``'s image.
        caption_image: ``(N_t,)`` int64, the image of each caption.

    Returns:
        ``(N_i, D)`` float32: for each image, the row of its first caption.
    """
    n_captions, dim = arr.shape
    first = torch.full((n_images,), n_captions, dtype=torch.long)
    first.scatter_reduce_(0, caption_image, torch.arange(n_captions), reduce="amin")
    if (first == n_captions).any():
        orphan = int((first == n_captions).nonzero()[0, 0])
        raise DsmdError(f"image {orphan} of the dataset split has no caption; per-caption features cannot cover it.")
    is_first = torch.zeros(n_captions, dtype=torch.bool)
    is_first[first] = True
    out = torch.empty(n_images, dim)
    for start in range(0, n_captions, BLOCK_ROWS):
        block = arr.block(start, min(start + BLOCK_ROWS, n_captions))
        _check_finite(block, arr, start)
        images = caption_image[start : start + len(block)]
        keep = is_first[start : start + len(block)]
        out[images[keep]] = block[keep]
        # a caption's first row is at or before it, so it is already in ``out``
        reference = out[images]
        diff = (block - reference).norm(dim=1)
        bad = diff > tolerance * reference.norm(dim=1)
        if bad.any():
            j = int(bad.nonzero()[0, 0])
            image = int(images[j])
            max_abs = float((block[j] - reference[j]).abs().max())
            raise DsmdError(
                f"{arr.where}: rows {int(first[image])} and {start + j} both hold image {image} (one row per "
                f"caption), but they differ: max |difference| {max_abs:.4g}, relative {float(diff[j]) / max(float(reference[j].norm()), 1e-30):.3g} "
                f"> tolerance {tolerance:g}. The rows are not in the dataset's caption order, or the image "
                "features differ per caption; check data.* and the file (or raise the tolerance if this is noise)."
            )
    return out


def _normalise(x: torch.Tensor, arr: SourceArray, normalize: bool) -> tuple[torch.Tensor, bool]:
    """``x`` L2-normalised (if ``normalize``), and whether it already was unit-norm."""
    norms = x.norm(dim=1)
    unit = bool(((norms - 1).abs() <= UNIT_NORM_ATOL).all()) if len(x) else True
    if normalize:
        if len(x) and bool((norms == 0).any()):
            row = int((norms == 0).nonzero()[0, 0])
            raise DsmdError(f"{arr.where}: row {row} is all zeros and cannot be L2-normalised.")
        x = F.normalize(x, dim=-1)
    return x, unit


def _convert(plan: _SplitPlan, normalize: bool, tolerance: float) -> tuple[SplitFeatures, dict]:
    caption_image = torch.tensor(plan.data.caption_image, dtype=torch.long)
    dim = plan.text.shape[1]
    if plan.layout == DSMD_LAYOUT:
        image = _dedupe_image_rows(plan.image, caption_image, plan.data.num_images, tolerance)
    else:
        image = torch.empty(plan.data.num_images, dim)
        _read_rows(plan.image, image)
    text = torch.empty(len(plan.data), dim)
    _read_rows(plan.text, text)
    image, image_unit = _normalise(image, plan.image, normalize)
    text, text_unit = _normalise(text, plan.text, normalize)
    info = {
        "layout": plan.layout,
        "input_dtype": {"image": plan.image.dtype, "text": plan.text.dtype},
        "input_unit_norm": {"image": image_unit, "text": text_unit},
    }
    if plan.layout == DSMD_LAYOUT:
        info["tolerance"] = tolerance
    return SplitFeatures(image, text, caption_image), info


# -- the import ---------------------------------------------------------------------------------


def _file_record(arr: SourceArray, hashes: dict[Path, str]) -> dict:
    if arr.file not in hashes:
        hashes[arr.file] = file_sha256(arr.file)
    return {
        "path": str(arr.file),
        "entry": arr.key,
        "sha256": hashes[arr.file],
        "bytes": arr.file.stat().st_size,
        "shape": list(arr.shape),
    }


def import_features(
    cfg: RunConfig,
    files: dict[str, list[str | Path]] | None = None,
    *,
    image_key: str | None = None,
    text_key: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    trust_pickle: bool = False,
    overwrite: bool = False,
    log=print,
) -> FeatureStore:
    """Write the feature store ``cfg.store`` from features computed elsewhere.

    Args:
        cfg: ``teacher.kind`` must be ``imported``; ``teacher.name_or_path`` is the feature
            file or folder (see the module docstring), ``data`` the dataset they belong to,
            ``teacher.normalize`` whether to L2-normalise, ``store_dtype`` the stored dtype.
        files: per split, ``[IMAGE_FILE, TEXT_FILE]`` or ``[FILE]``, instead of a file or
            folder in ``teacher.name_or_path``.
        image_key: the entry name of the image features.
        text_key: the entry name of the text features.
        tolerance: how far the repeated rows of one image may differ (relative L2).
        trust_pickle: allow reading pickles (which can run code).
        overwrite: replace an existing store built differently.

    Returns:
        The finished store; train with ``teacher.kind=imported`` and
        ``teacher.name_or_path=store.teacher["source"]``.

    Raises:
        DsmdError: a file is missing, unreadable or ambiguous; shapes, row counts or widths do
            not match the dataset; a value is NaN or inf; repeated image rows disagree; the
            store exists for something else (without ``overwrite``); another process is
            writing the store (:class:`~dsmd.runtime.lock.FolderInUse`).
    """
    if cfg.teacher.kind != "imported":
        raise DsmdError(
            f"importing features writes a store of teacher.kind=imported, but the config has "
            f"teacher.kind={cfg.teacher.kind}. Set teacher.kind=imported."
        )
    if not files and not cfg.teacher.name_or_path:
        raise DsmdError("set teacher.name_or_path to the feature file or folder (or give the files per split).")
    if cfg.store_views:
        raise DsmdError(
            f"store_views={cfg.store_views}, but imported features have no augmented views. Set store_views=0."
        )
    if not tolerance >= 0:
        raise DsmdError(f"tolerance must be >= 0, got {tolerance}.")
    out = Path(cfg.store)
    writes = overwrite or not (out / MANIFEST).is_file()  # a store that is there may hold these features
    if writes:
        check_writable(out.parent, "store")
    with exclusive_folder(out, "store", needed=writes):  # one writer per store, before anything is read
        return _import(cfg, files, image_key, text_key, tolerance, trust_pickle, overwrite, log)


def _import(
    cfg: RunConfig,
    files: dict[str, list[str | Path]] | None,
    image_key: str | None,
    text_key: str | None,
    tolerance: float,
    trust_pickle: bool,
    overwrite: bool,
    log,
) -> FeatureStore:
    """The work of :func:`import_features`, its arguments checked and the store's lock held."""
    t0 = time.perf_counter()
    if files:
        paths = [Path(p) for ps in files.values() for p in ps]
        source = cfg.teacher.name_or_path or str(Path(os.path.commonpath([str(p.resolve()) for p in paths])))
    else:
        source = cfg.teacher.name_or_path
    opened: dict[Path, dict] = {}
    split_files, prefixed = resolve_files(Path(source), files, trust_pickle, opened)
    dataset = load_dataset(cfg.data)

    image_names = (image_key,) if image_key else IMAGE_KEYS
    text_names = (text_key,) if text_key else TEXT_KEYS
    plans: dict[str, _SplitPlan] = {}
    for split, sf in split_files.items():
        for file in {sf.image, sf.text}:
            if file not in opened:
                opened[file] = read_entries(file, trust_pickle)
        alone_ok = sf.image != sf.text  # a file for one modality may hold a single unnamed array
        image = pick_entry(
            opened[sf.image], sf.image, split, image_names, "image", "image_key (--image-key)", alone_ok, prefixed
        )
        text = pick_entry(
            opened[sf.text], sf.text, split, text_names, "text", "text_key (--text-key)", alone_ok, prefixed
        )
        plans[split] = _plan_split(split, dataset[split], image, text)
    for split in ("train", "val"):
        if split not in plans and dataset[split].num_images:
            raise DsmdError(
                f"no features for split '{split}' in {source} (training needs train and val). "
                f"Add {split}_image + {split}_text files, or give them with --{split} IMAGE [TEXT]."
            )
    if not plans:
        raise DsmdError(f"no features for any split in {source}.")
    dims = {split: plan.text.shape[1] for split, plan in plans.items()}
    if len(set(dims.values())) > 1:
        raise DsmdError(f"the splits' features have different widths ({dims}); they must come from one teacher.")
    dim = next(iter(dims.values()))

    out = Path(cfg.store)
    check_writable(out.parent, "store")
    hashes: dict[Path, str] = {}
    identity: dict[str, Any] = {
        "kind": "imported",
        "name": source,
        "source": source,
        "dim": dim,
        "files": {},
        "splits": {},
    }
    for split, plan in plans.items():
        identity["files"][split] = {"image": _file_record(plan.image, hashes), "text": _file_record(plan.text, hashes)}
    expected_splits = {
        split: {"fingerprint": d.fingerprint(), "num_images": d.num_images, "num_captions": len(d)}
        for split, d in dataset.items()
        if split in plans or d.num_images == 0
    }
    expected = {
        "format_version": FORMAT_VERSION,
        "teacher": identity,
        "normalized": cfg.teacher.normalize,
        "dtype": cfg.store_dtype,
        "dim": dim,
        "views": {"train": 0},
        "data": config_to_dict(cfg.data),
        "splits": expected_splits,
    }
    if (out / MANIFEST).is_file() and not overwrite:
        found = read_manifest(out / MANIFEST, f"Delete {out} and import the features again.")
        # the per-split facts derived from the data are compared after conversion
        found_teacher = {k: v for k, v in found.get("teacher", {}).items() if k != "splits"}
        diff = describe_mismatch(
            {**found, "teacher": found_teacher},
            {**expected, "teacher": {k: v for k, v in identity.items() if k != "splits"}},
        )
        if not diff:
            log(f"feature store {out} already holds these features; nothing to import")
            return FeatureStore.open(out)
        raise DsmdError(
            f"feature store {out} exists but was built differently ({'; '.join(diff)[:400]}). "
            "Pass --overwrite to replace it, or choose another store=PATH."
        )
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise DsmdError(f"{out} exists and is not a feature store. Choose another store=PATH.")

    writer = StoreWriter(out, fresh=True)
    try:
        for split in SPLITS:
            if split in plans:
                feats, info = _convert(plans[split], cfg.teacher.normalize, tolerance)
                identity["splits"][split] = info
                kind = "one row per caption, de-duplicated" if info["layout"] == DSMD_LAYOUT else "one row per image"
                log(f"{split}: {feats.image.shape[0]} images ({kind}), {feats.text.shape[0]} captions, {dim}-d")
            elif split in expected_splits:  # an empty split of the dataset
                feats = SplitFeatures(torch.empty(0, dim), torch.empty(0, dim), torch.empty(0, dtype=torch.long))
            else:
                log(f"{split}: no features given; the store has no '{split}' split")
                continue
            writer.write_split(split, feats, cfg.store_dtype, cfg.store_shard_rows)
        written = [split for split in SPLITS if writer.has_split(split)]
        writer.finish({**expected, "shard_rows": cfg.store_shard_rows or None}, written, replace=True, started=t0)
    except BaseException:
        writer.abort()
        raise
    return FeatureStore.open(out)
