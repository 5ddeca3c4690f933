"""dsmd index / search: build, add, resume, skip unreadable files, refuse mixed feature spaces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dsmd
import dsmd.search.assemble as assemble_module
import dsmd.search.index as index_module
from conftest import many_captions
from dsmd.cli import main
from dsmd.errors import DsmdError
from dsmd.search.build import index_images, index_teacher_store, index_texts
from dsmd.search.index import Index
from dsmd.search.query import check_space, query_model, run_query

QUIET = {"progress": False, "log": lambda *_: None}


def _gallery(folder: Path, count: int, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        img = Image.new("RGB", (32 + i % 7, 32), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
        img.save(folder / f"img{i:03d}.png")
    return folder


def test_an_image_index_finds_each_image_by_itself(searchable, tmp_path):
    encoder = dsmd.load_student(searchable["export"])
    gallery = _gallery(tmp_path / "photos", 12)
    (gallery / "notes.txt").write_text("not an image")  # ignored: not an image extension
    (gallery / "broken.png").write_bytes(b"not a png")
    index = index_images(tmp_path / "index", encoder, [str(gallery)], **QUIET)
    assert len(index) == 12 and index.kind == "images" and index.space == encoder.space
    skipped = (tmp_path / "index" / "skipped.txt").read_text()
    assert "broken.png\tcannot read image" in skipped
    meta = json.loads((tmp_path / "index" / "meta.json").read_text())
    assert meta["count"] == 12 and meta["skipped"] == 1 and meta["model"]["model_id"] == encoder.model_id
    for item in index.items[:3]:
        result = run_query(index, encoder, image=item["path"], k=3)
        assert result["results"][0]["path"] == item["path"] and result["results"][0]["score"] == pytest.approx(
            1.0, abs=1e-4
        )
        assert result["ms"] > 0 and set(result) == {"query", "results", "ms"}


def test_adding_encodes_only_the_new_images(searchable, tmp_path, monkeypatch):
    encoder = dsmd.load_student(searchable["export"])
    gallery = _gallery(tmp_path / "photos", 5)
    index_images(tmp_path / "index", encoder, [str(gallery)], **QUIET)
    _gallery(gallery, 3, start=5)
    encoded = []
    real = encoder.encode_image_files
    monkeypatch.setattr(encoder, "encode_image_files", lambda paths: (encoded.extend(paths), real(paths))[1])
    index = index_images(tmp_path / "index", encoder, [str(gallery)], **QUIET)
    assert len(index) == 8 and sorted(Path(p).name for p in encoded) == ["img005.png", "img006.png", "img007.png"]
    fresh = index_images(tmp_path / "fresh", encoder, [str(gallery)], **QUIET)
    order = [i["path"] for i in fresh.items]  # the same features as encoding everything at once
    np.testing.assert_allclose(
        np.asarray(fresh.vectors)[[order.index(i["path"]) for i in index.items]], np.asarray(index.vectors), atol=1e-6
    )


def test_an_interrupted_build_resumes_from_its_finished_chunks(searchable, tmp_path, monkeypatch):
    encoder = dsmd.load_student(searchable["export"])
    gallery = _gallery(tmp_path / "photos", 10)
    monkeypatch.setattr(index_module, "CHUNK", 4)
    monkeypatch.setattr("dsmd.search.build.CHUNK", 4)
    calls = []
    real = encoder.encode_image_files

    def dies_on_third(paths):
        calls.append(len(paths))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(paths)

    monkeypatch.setattr(encoder, "encode_image_files", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        index_images(tmp_path / "index", encoder, [str(gallery)], **QUIET)
    assert not (tmp_path / "index").exists() and len(list((tmp_path / "index.partial").glob("chunk-*.npz"))) == 2
    calls.clear()
    monkeypatch.setattr(encoder, "encode_image_files", lambda paths: (calls.append(len(paths)), real(paths))[1])
    index = index_images(tmp_path / "index", encoder, [str(gallery)], **QUIET)
    assert calls == [2] and len(index) == 10 and not (tmp_path / "index.partial").exists()


def test_a_build_stopped_while_writing_the_index_resumes(searchable, tmp_path, monkeypatch):
    encoder = dsmd.load_student(searchable["export"])
    gallery = _gallery(tmp_path / "photos", 6)
    real = assemble_module.write_index

    def written_then_stopped(folder, *args, **kwargs):
        real(folder, *args, **kwargs)
        (folder / "meta.json").unlink()  # as if stopped before its last file
        raise KeyboardInterrupt

    monkeypatch.setattr(assemble_module, "write_index", written_then_stopped)
    with pytest.raises(KeyboardInterrupt):
        index_images(tmp_path / "index", encoder, [str(gallery)], **QUIET)
    assert not (tmp_path / "index").exists() and (tmp_path / "index.partial" / "chunk-00000.npz").is_file()
    monkeypatch.setattr(assemble_module, "write_index", real)
    encoded = []
    monkeypatch.setattr(encoder, "encode_image_files", lambda paths: encoded.append(paths))  # nothing to encode
    index = index_images(tmp_path / "index", encoder, [str(gallery)], **QUIET)
    assert len(index) == 6 and not encoded and not (tmp_path / "index.partial").exists()


def test_asymmetric_search_of_the_teachers_gallery(searchable, tmp_path):
    index = index_teacher_store(tmp_path / "teacher", str(searchable["store"]), "test", **QUIET)
    assert index.meta["model"]["store"] and len(index) == 6
    with pytest.raises(DsmdError, match="give the query model with --model"):
        query_model(index, None)
    encoder = query_model(index, str(searchable["export"]))  # a student of that teacher: allowed
    result = run_query(index, encoder, text="a red circle", k=3)
    assert len(result["results"]) == 3 and all("path" in r for r in result["results"])


def test_a_model_of_another_feature_space_is_refused(searchable, tmp_path):
    encoder = dsmd.load_student(searchable["export"])
    index = index_images(tmp_path / "index", encoder, [str(_gallery(tmp_path / "photos", 3))], **QUIET)
    encoder.space = "0123456789abcdef"  # as if distilled from another teacher
    with pytest.raises(DsmdError, match="encodes into feature space 0123456789abcdef.*scores would mean nothing"):
        check_space(index, encoder)
    encoder.model_id = "another"
    with pytest.raises(DsmdError, match="would mix two models' features"):
        index_images(tmp_path / "index", encoder, [str(tmp_path / "photos")], **QUIET)


def test_caption_index_and_approximate_search(searchable, tmp_path):
    encoder = dsmd.load_student(searchable["export"])
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle\na green square\n\na blue triangle\na red circle\n")
    index = index_texts(tmp_path / "texts", encoder, str(captions), **QUIET)
    assert [i["text"] for i in index.items] == ["a red circle", "a green square", "a blue triangle"]
    assert run_query(index, encoder, text="a green square", k=1)["results"][0]["text"] == "a green square"
    approx = index_images(
        tmp_path / "hnsw", encoder, [str(_gallery(tmp_path / "photos", 20))], approximate=True, **QUIET
    )
    assert approx.meta["approximate"]["type"] == "hnsw"
    first = approx.items[4]["path"]
    assert run_query(approx, encoder, image=first, k=1)["results"][0]["path"] == first


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_the_commands(searchable, tmp_path, capsys):
    gallery = _gallery(tmp_path / "photos", 4)
    code, out, err = _cli(
        [
            "index",
            "--quiet",
            "--model",
            str(searchable["export"]),
            "--images",
            str(gallery),
            "--out",
            str(tmp_path / "index"),
        ],
        capsys,
    )
    assert code == 0 and "4 new images added" in out, err
    code, out, err = _cli(
        ["search", "--index", str(tmp_path / "index"), "--text", "a red circle", "-k", "2", "--json"], capsys
    )
    result = json.loads(out)
    assert code == 0 and len(result["results"]) == 2 and {"path", "score", "id"} == set(result["results"][0])
    code, out, _ = _cli(["search", "--index", str(tmp_path / "index"), "--text", "a red circle"], capsys)
    assert code == 0 and "of 4 images" in out


def test_a_compressed_index_through_the_commands(searchable, tmp_path, capsys):
    captions = many_captions(1210)
    (tmp_path / "captions.txt").write_text("\n".join(captions[:1200]) + "\n")
    index = str(tmp_path / "index")
    build = ["index", "--quiet", "--model", str(searchable["export"]), "--texts", str(tmp_path / "captions.txt")]
    code, out, err = _cli([*build, "--index-kind", "ivfpq", "--out", index], capsys)
    assert code == 0 and "1200 new texts added" in out and "ivfpq index" in out and "recall@10" in out, err
    meta = json.loads((tmp_path / "index" / "meta.json").read_text())
    # (the tiny test student maps every caption to nearly one vector, so its recall says nothing:
    # recall is checked on real neighbourhoods in test_index_kinds.py)
    assert meta["index"]["kind"] == "ivfpq" and 0 <= meta["index"]["recall_at_10"] <= 1
    code, out, _ = _cli(["search", "--index", index, "--text", captions[5], "-k", "3", "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and set(result) == {"query", "results", "ms"} and len(result["results"]) == 3
    assert all(set(hit) == {"id", "text", "score"} for hit in result["results"])
    code, out, _ = _cli(["search", "--index", index, "--text", captions[5], "-k", "3"], capsys)
    assert code == 0 and "of 1200 texts" in out and "ivfpq index" in out
    (tmp_path / "captions.txt").write_text("\n".join(captions) + "\n")  # 10 more: the index keeps its kind
    code, out, _ = _cli([*build, "--out", index], capsys)
    assert code == 0 and "10 new texts added" in out and Index.open(index).index_kind == "ivfpq"


def test_shards_built_apart_answer_as_the_whole_gallery(searchable, tmp_path, capsys):
    gallery = _gallery(tmp_path / "photos", 12)
    build = ["index", "--quiet", "--model", str(searchable["export"]), "--images", str(gallery)]
    assert _cli([*build, "--out", str(tmp_path / "whole")], capsys)[0] == 0
    for k in range(2):
        code, out, _ = _cli([*build, "--shard", f"{k}/2", "--out", str(tmp_path / f"shard{k}")], capsys)
        assert code == 0 and Index.open(tmp_path / f"shard{k}").meta["shard"] == {"index": k, "of": 2}
    query = ["search", "--text", "a red circle", "-k", "12", "--json", "--index"]
    whole = json.loads(_cli([*query, str(tmp_path / "whole")], capsys)[1])["results"]
    sharded = json.loads(_cli([*query, str(tmp_path / "shard0"), str(tmp_path / "shard1")], capsys)[1])["results"]
    assert [(r["path"], r["score"]) for r in sharded] == [(r["path"], r["score"]) for r in whole]
    code, _, err = _cli([*build, "--shard", "1/2", "--out", str(tmp_path / "shard0")], capsys)
    assert code == 2 and "index " in err and "is shard 0/2; this build is shard 1/2" in err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["index", "--model", "EXPORT", "--images", "EMPTY", "--out", "OUT/i"], "no images found in"),
        (
            ["index", "--model", "EXPORT", "--images", "PHOTOS", "--index-kind", "ivfpq", "--out", "OUT/i"],
            "at least 1,000",
        ),
        (
            [
                "index",
                "--model",
                "EXPORT",
                "--images",
                "PHOTOS",
                "--approximate",
                "--index-kind",
                "flat",
                "--out",
                "OUT/i",
            ],
            "--approximate means --index-kind hnsw",
        ),
        (["index", "--model", "EXPORT", "--images", "PHOTOS", "--shard", "2/2", "--out", "OUT/i"], "--shard takes K/N"),
        (
            ["index", "--model", "EXPORT", "--images", "PHOTOS", "--nprobe", "0", "--out", "OUT/i"],
            "--nprobe must be at least 1",
        ),
        (["search", "--index", "INDEX", "INDEX", "--text", "x"], "given twice"),
        (["index", "--model", "EXPORT", "--images", "OUT/none", "--out", "OUT/i"], "does not exist"),
        (["index", "--images", "EMPTY", "--out", "OUT/i"], "give the model that encodes the items"),
        (["search", "--index", "OUT/none", "--text", "x"], "no index at"),
        (["search", "--index", "INDEX", "--text", " "], "the query is empty"),
        (["index", "--model", "OUT/missing_export", "--images", "EMPTY", "--out", "OUT/i"], "no student at"),
    ],
)
def test_bad_index_and_search_inputs(searchable, tmp_path, capsys, argv, fragment):
    encoder = dsmd.load_student(searchable["export"])
    index_images(tmp_path / "index", encoder, [str(_gallery(tmp_path / "photos", 2))], **QUIET)
    (tmp_path / "empty").mkdir()
    names = {
        "EXPORT": str(searchable["export"]),
        "EMPTY": str(tmp_path / "empty"),
        "INDEX": str(tmp_path / "index"),
        "PHOTOS": str(tmp_path / "photos"),
    }
    argv = [names.get(a, a.replace("OUT", str(tmp_path))) for a in argv]
    before = {p for p in tmp_path.rglob("*")}
    code, _, err = _cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert {p for p in tmp_path.rglob("*")} <= before


def test_a_corrupt_index_is_one_line(searchable, tmp_path):
    encoder = dsmd.load_student(searchable["export"])
    index_images(tmp_path / "index", encoder, [str(_gallery(tmp_path / "photos", 3))], **QUIET)
    broken = shutil.copytree(tmp_path / "index", tmp_path / "broken")
    (broken / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(DsmdError, match=r"index.faiss is damaged \(7 bytes where"):
        Index.open(broken)
    shutil.copy(tmp_path / "index" / "index.faiss", broken / "index.faiss")
    with (broken / "items.jsonl").open("a") as f:
        f.write('{"id": 3, "path": "x"}\n')
    with pytest.raises(DsmdError, match="items.jsonl is damaged"):
        Index.open(broken)
    meta = json.loads((broken / "meta.json").read_text())  # an index of an older dsmd: no checksums
    (broken / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in ("files", "sha256")}))
    with pytest.raises(DsmdError, match="disagree"):
        Index.open(broken)
    (broken / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(DsmdError, match="incomplete or corrupt"):
        Index.open(broken)
