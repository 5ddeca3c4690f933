import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from format_writers import image_bytes, make_image, write_plain_tar
from PIL import Image

from dsmd.data import images
from dsmd.data.datasets import CaptionedImages
from dsmd.data.images import (
    ImageRef,
    identity,
    load_image,
    parse_ref,
    table_ref,
    tar_index,
    tar_ref,
)
from dsmd.errors import DsmdError


def test_reference_syntax():
    assert parse_ref("/data/a.png") is None and parse_ref("/odd::name.png") is None
    assert parse_ref("/s/train-000001.tar::000123.jpg") == ImageRef("/s/train-000001.tar", "000123.jpg")
    ref = parse_ref(table_ref("/d/part-0.parquet", 12, "image"))
    assert ref == ImageRef("/d/part-0.parquet", "row=12::col=image", 12, "image")
    assert tar_ref("/s/x.tar", "dir/k.jpg") == "/s/x.tar::dir/k.jpg"
    with pytest.raises(DsmdError, match="row=R::col=COLUMN"):
        parse_ref("/d/part-0.parquet::12")


def test_load_image_is_the_same_from_transforms():
    from dsmd.data import transforms

    assert transforms.load_image is load_image


def test_tar_members_decode_like_the_original_files(tmp_path):
    png, rgba = tmp_path / "a.png", tmp_path / "b.png"
    make_image(1).save(png)
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(rgba)
    tar = write_plain_tar(
        tmp_path / "s.tar", [("k/a.png", png.read_bytes()), ("k/b.png", rgba.read_bytes()), ("k/a.txt", b"caption")]
    )
    assert np.array_equal(np.asarray(load_image(tar_ref(tar, "k/a.png"))), np.asarray(load_image(png)))
    assert load_image(tar_ref(tar, "k/b.png")).getpixel((0, 0)) == (255, 255, 255)  # composited on white
    index = tar_index(tar)
    assert set(index) == {"k/a.png", "k/b.png", "k/a.txt"} and index["k/a.png"][1] == png.stat().st_size
    assert tar_index(tar) is index  # cached per process
    write_plain_tar(tar, [("k/c.png", png.read_bytes())])  # rewritten: the index is rebuilt
    later = tar.stat().st_mtime_ns + 10**9  # (as a later write would, whatever the clock's grain)
    os.utime(tar, ns=(later, later))
    assert set(tar_index(tar)) == {"k/c.png"}
    with pytest.raises(DsmdError, match=r"member k/a.png not found in .*s.tar"):
        load_image(tar_ref(tar, "k/a.png"))
    with pytest.raises(DsmdError, match=r"container not found: .*gone.tar \(for member x.jpg\)"):
        load_image(tar_ref(tmp_path / "gone.tar", "x.jpg"))
    bad = write_plain_tar(tmp_path / "bad.tar", [("x.jpg", b"not an image")])
    with pytest.raises(DsmdError, match=r"cannot read image x.jpg of .*bad.tar"):
        load_image(tar_ref(bad, "x.jpg"))


def test_parquet_and_arrow_cells(tmp_path):
    cells = [{"bytes": image_bytes(i), "path": f"{i}.png"} for i in range(5)]
    table = pa.table({"image": cells, "raw": [image_bytes(10 + i) for i in range(5)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    with pa.OSFile(str(tmp_path / "t.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    for name in ("t.parquet", "t.arrow"):
        for row in (0, 3, 4):
            assert np.array_equal(
                np.asarray(load_image(table_ref(tmp_path / name, row, "image"))), np.asarray(make_image(row))
            )
            assert np.array_equal(
                np.asarray(load_image(table_ref(tmp_path / name, row, "raw"))), np.asarray(make_image(10 + row))
            )
        with pytest.raises(DsmdError, match=rf"row 5 not in .*{name}"):
            load_image(table_ref(tmp_path / name, 5, "image"))
        with pytest.raises(DsmdError, match=rf"{name} has no column 'picture'"):
            load_image(table_ref(tmp_path / name, 0, "picture"))
    assert len(images._row_groups) <= images.ROW_GROUP_CACHE


def test_fingerprint_of_references_reads_no_image(tmp_path, monkeypatch):
    tar = write_plain_tar(tmp_path / "s.tar", [("a.jpg", image_bytes(0, "JPEG")), ("b.jpg", image_bytes(1, "JPEG"))])
    data = CaptionedImages([tar_ref(tar, "a.jpg"), tar_ref(tar, "b.jpg")], ["x", "y"], [0, 1])

    def no_reads(*args, **kwargs):
        raise AssertionError("the fingerprint read an image")

    monkeypatch.setattr(images, "read_member", no_reads)
    monkeypatch.setattr(images, "tar_index", no_reads)
    before = data.fingerprint()
    assert data.fingerprint() == before
    assert identity(tar_ref(tar, "a.jpg")) == f"s.tar::a.jpg\0{tar.stat().st_size}"
    moved = CaptionedImages([tar_ref(tar, "b.jpg"), tar_ref(tar, "a.jpg")], ["x", "y"], [0, 1])
    assert moved.fingerprint() != before


def test_plain_files_keep_their_fingerprint(tmp_path):
    import hashlib

    path = tmp_path / "a.png"
    Image.open(io.BytesIO(image_bytes(0))).save(path)
    data = CaptionedImages([str(path)], ["cap"], [0])
    # the identity of a file is unchanged from before references existed: stores stay valid
    expected = hashlib.sha256(f"a.png\0{path.stat().st_size}\n".encode() + b"0\0cap\n").hexdigest()
    assert data.fingerprint() == expected
