"""Teacher features inside webdataset shards, beside their images.

For streaming set-ups that read samples from tar shards and want each sample's targets in the
sample itself (no feature store at training time), :func:`write_teacher_shards` copies the
shards of a ``data.kind=webdataset`` dataset and adds, after the members of each sample that
the feature store ``cfg.store`` holds::

    KEY.teacher_image.npy    (D,)   the teacher's feature of the sample's image
    KEY.teacher_text.npy     (C, D) the features of its C captions, in the order of its
                             .txt lines (or .json captions), as dsmd lists them
    KEY.teacher_views.npy    (V, D) the stored augmented views (stores with store_views > 0)

in the store's dtype (float32 or float16), as ``numpy.save`` writes them (``webdataset``
decodes ``.npy`` members to arrays). Every other member is copied unchanged, in order; a
sample dsmd skips (no image or no caption) gets no teacher members. A shard keeps its file
name under the output folder (shards of several folders keep their paths relative to the
folder that holds them all). Each copy is written to ``NAME.tmp`` and renamed when complete.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import torch
from webdataset.tariterators import base_plus_ext

from dsmd.config import RunConfig
from dsmd.data.datasets import load_dataset
from dsmd.data.formats.webdataset import _META, expand_shards, iter_samples
from dsmd.data.images import tar_ref
from dsmd.errors import DsmdError
from dsmd.runtime.files import atomic_path
from dsmd.runtime.lock import exclusive_folder
from dsmd.store import FeatureStore

TEACHER_MEMBERS = ("teacher_image.npy", "teacher_text.npy", "teacher_views.npy")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes, like: tarfile.TarInfo) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), like.mtime, 0o644
    info.uid, info.gid, info.uname, info.gname = like.uid, like.gid, like.uname, like.gname
    tf.addfile(info, io.BytesIO(data))


def write_teacher_shards(cfg: RunConfig, out_dir: str | Path, log=print) -> list[Path]:
    """Copy ``cfg.data``'s shards into ``out_dir`` with the store's teacher features added.

    Args:
        cfg: ``data`` a webdataset (``data.kind=webdataset``), ``store`` its feature store
            (built by ``dsmd extract`` or ``dsmd import-features`` for this data).
        out_dir: folder for the copies (created; must not be the shards' own folder).

    Returns:
        The paths of the copies, in shard order.

    Raises:
        DsmdError: not a webdataset, no store or one built for other data, ``out_dir`` is
            where the shards are, or another process is writing ``out_dir`` (its lock).
    """
    if cfg.data.kind != "webdataset":
        raise DsmdError(f"teacher features go into webdataset shards; data.kind is {cfg.data.kind}.")
    store = FeatureStore.open(cfg.store)
    dataset = load_dataset(cfg.data)
    dtype = np.float16 if store.manifest.get("dtype") == "float16" else np.float32
    rows: dict[str, tuple[str, int]] = {}  # image reference -> (split, image row)
    captions: dict[str, list[list[int]]] = {}
    for split in store.manifest["splits"]:
        store.check_dataset(split, dataset[split].fingerprint())
        data = dataset[split]
        rows.update({ref: (split, i) for i, ref in enumerate(data.image_paths)})
        captions[split] = [[] for _ in range(data.num_images)]
        for j, i in enumerate(data.caption_image):
            captions[split][i].append(j)

    shards = expand_shards(cfg.data.manifest)
    common = Path(os.path.commonpath([str(Path(s).parent) for s in shards]))
    out_dir = Path(out_dir).absolute()
    if any(Path(s).parent == out_dir for s in shards):
        raise DsmdError(f"{out_dir} holds the shards themselves; write the copies into another folder.")
    with exclusive_folder(out_dir, "out_dir"):  # one writer: a second copy into out_dir is refused, naming this one
        written = []
        for shard in shards:
            keys = {}  # sample key -> teacher members
            for sample in iter_samples(shard):
                if sample.image is None or not sample.captions or tar_ref(shard, sample.image) not in rows:
                    continue
                split, i = rows[tar_ref(shard, sample.image)]
                feats = store.split(split)
                members = {
                    "teacher_image.npy": feats.image_rows(torch.tensor([i]), torch.tensor([0]))[0],
                    "teacher_text.npy": feats.text_rows(torch.tensor(captions[split][i], dtype=torch.long)),
                }
                if feats.num_views:
                    members["teacher_views.npy"] = feats.image_rows(
                        torch.full((feats.num_views,), i), torch.arange(1, feats.num_views + 1)
                    )
                keys[sample.key] = {name: _npy(t.numpy().astype(dtype)) for name, t in members.items()}
            target = out_dir / Path(shard).relative_to(common)
            target.parent.mkdir(parents=True, exist_ok=True)
            count = len(keys)
            with (
                atomic_path(target) as tmp,
                tarfile.open(shard, "r:") as src,
                tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as dst,
            ):
                key, last = None, None
                for member in src:
                    base, ext = base_plus_ext(member.name) if member.isfile() else (None, None)
                    if base is not None and not _META.match(member.name):
                        if base != key and key in keys:  # the end of a sample: its teacher members
                            for name, data in keys.pop(key).items():
                                _add(dst, f"{key}.{name}", data, last)
                        key, last = base, member
                    if ext is not None and ext.lower() in TEACHER_MEMBERS:
                        continue  # those of an earlier copy are replaced
                    dst.addfile(member, src.extractfile(member) if member.isfile() else None)
                if key in keys:
                    for name, data in keys.pop(key).items():
                        _add(dst, f"{key}.{name}", data, last)
            written.append(target)
            log(f"{target}: teacher features of {count} samples")
    return written
