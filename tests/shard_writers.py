"""Write a generated dataset's splits as webdataset shards (shared by the training tests).

Imported by name (``from shard_writers import write_shards``): ``tests/`` is on the path
because ``tests/conftest.py`` lives there.
"""

from __future__ import annotations

from pathlib import Path


def write_shards(splits: dict, folder: Path, per_shard: int = 4) -> None:
    """``SPLIT-00000k.tar`` shards of ``per_shard`` images: ``KEY.png`` and ``KEY.txt`` (its captions, one a line)."""
    import webdataset as wds

    folder.mkdir()
    for split, data in splits.items():
        for start in range(0, data.num_images, per_shard):
            with wds.TarWriter(str(folder / f"{split}-{start // per_shard:06d}.tar")) as sink:
                for row in range(start, min(start + per_shard, data.num_images)):
                    caps = [c for c, r in zip(data.captions, data.caption_image, strict=True) if r == row]
                    sink.write(
                        {
                            "__key__": f"{row:06d}",
                            "png": Path(data.image_paths[row]).read_bytes(),
                            "txt": "\n".join(caps),
                        }
                    )
