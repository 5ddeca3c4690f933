"""Manifests, split files and caption members: wrong types and bytes that are not UTF-8 are one
line naming the file, the line (or member) and the field; a UTF-8 byte-order mark is read."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from format_writers import image_bytes, shard_sample, write_plain_tar
from PIL import Image

from dsmd.config import DataConfig
from dsmd.data.datasets import load_dataset, load_split
from dsmd.data.formats.tuxpaint import list_tuxpaint
from dsmd.errors import DsmdError

GOOD = '{"image": "ok.png", "caption": "a fine line"}'


def _raises(cfg: DataConfig, pattern: str) -> str:
    with pytest.raises(DsmdError, match=pattern) as info:
        load_dataset(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message


def _manifest(tmp_path, name: str, content: bytes) -> DataConfig:
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    (tmp_path / name).write_bytes(content)
    return DataConfig(kind="manifest", manifest=str(tmp_path / name), val_fraction=0, test_fraction=0)


@pytest.mark.parametrize(
    "line, pattern",
    [
        ('{"image": 12, "caption": "x"}', r"'image' must be a string \(the image's path\), not a number \(12\)\.$"),
        ('{"image": ["ok.png"], "caption": "x"}', r"'image' must be a string \(the image's path\), not a list\.$"),
        ('{"image": "ok.png", "captions": 5}', r"'captions' must be a string or a list of strings, not a number \(5\)"),
        (
            '{"image": "ok.png", "captions": {"a": "b"}}',
            r"'captions' must be a string or a list of strings, not an object",
        ),
        (
            '{"image": "ok.png", "caption": true}',
            r"'caption' must be a string or a list of strings, not a boolean \(true\)",
        ),
        (
            '{"image": "ok.png", "captions": ["a", 7]}',
            r"captions\[1\] must be a string \(a caption\), not a number \(7\)",
        ),
        ('{"image": "ok.png", "captions": ["a", null]}', r"captions\[1\] must be a string \(a caption\), not null"),
        (
            '{"image": "ok.png", "caption": "x", "split": 3}',
            r"'split' must be a string \(one of train, .*\), not a number",
        ),
        ('{"image": "ok.png", "caption": "a", "captions": ["b"]}', r"both 'caption' and 'captions' are given"),
        ('["ok.png", "a caption"]', r"expected a JSON object with 'image' and 'captions', not a list"),
    ],
)
def test_jsonl_fields_of_the_wrong_type_name_file_line_and_field(tmp_path, line, pattern):
    cfg = _manifest(tmp_path, "m.jsonl", f"{GOOD}\n\n{line}\n".encode())
    _raises(cfg, rf"^{tmp_path / 'm.jsonl'}:3: {pattern}")


def test_jsonl_and_csv_that_are_not_utf8(tmp_path):
    latin = GOOD.replace("fine", "caf\xe9").encode("latin-1")
    cfg = _manifest(tmp_path, "m.jsonl", f"{GOOD}\n".encode() + latin + b"\n")
    offset = len(GOOD) + 1 + latin.index(b"\xe9")
    _raises(cfg, rf"^{tmp_path / 'm.jsonl'}:2: not UTF-8 text \(byte {offset} is 0xe9\)\. Save the file as UTF-8")
    content = b"image,caption\nok.png,fine\nok.png,na\xefve\n"
    cfg = _manifest(tmp_path, "m.csv", content)
    offset = content.index(b"\xef")
    _raises(cfg, rf"^{tmp_path / 'm.csv'}:3: not UTF-8 text \(byte {offset} is 0xef\)")


def test_byte_order_mark_is_read(tmp_path):
    cfg = _manifest(tmp_path, "m.csv", '\ufeffimage,caption,split\nok.png,first,train\nok.png,"a, b",train\n'.encode())
    data = load_split(cfg, "train")
    assert data.captions == ["first", "a, b"] and data.num_images == 1
    cfg = _manifest(tmp_path, "m.jsonl", f"\ufeff{GOOD}\n".encode())
    assert load_split(cfg, "train").captions == ["a fine line"]


def test_csv_rows_must_match_the_header(tmp_path):
    cfg = _manifest(tmp_path, "m.csv", b"image,caption\nok.png,fine\nok.png,a dog, running\n")
    _raises(cfg, rf"^{tmp_path / 'm.csv'}:3: 3 fields, but the header has 2\. Quote fields that contain commas\.")
    cfg = _manifest(tmp_path, "m.csv", b"image,caption,split\nok.png,fine\n")
    _raises(cfg, r"m.csv:2: 2 fields, but the header has 3")
    cfg = _manifest(tmp_path, "m.csv", b"path,text\nok.png,fine\n")
    _raises(cfg, r"needs a header with 'image' and 'caption' columns \(found: path, text\)")


def _karpathy(tmp_path, image: dict | None = None, raw: bytes | None = None) -> DataConfig:
    Image.new("RGB", (10, 10)).save(tmp_path / "1.jpg")
    entry = {"filename": "1.jpg", "split": "train", "sentences": [{"raw": "a caption"}]}
    path = tmp_path / "dataset_flickr30k.json"
    path.write_bytes(raw if raw is not None else json.dumps({"images": [entry, entry | (image or {})]}).encode())
    return DataConfig(kind="karpathy", manifest=str(path))


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"filename": 12}, r"images\[1\]: 'filename' must be a string, not a number \(12\)"),
        ({"split": 3}, r"images\[1\] \(1.jpg\): 'split' must be a string, not a number \(3\)"),
        ({"filepath": ["a"]}, r"images\[1\] \(1.jpg\): 'filepath' must be a string, not a list"),
        ({"sentences": {"raw": "x"}}, r"images\[1\] \(1.jpg\): 'sentences' must be a list, not an object"),
        ({"sentences": [{"raw": "x"}, {"raw": 5}]}, r"images\[1\] \(1.jpg\): sentences\[1\] has no 'raw' text"),
    ],
)
def test_karpathy_fields_of_the_wrong_type(tmp_path, change, pattern):
    _raises(_karpathy(tmp_path, change), rf"dataset_flickr30k.json: {pattern}")


def test_karpathy_file_that_is_not_utf8_or_has_a_bom(tmp_path):
    content = json.dumps(
        {"images": [{"filename": "1.jpg", "split": "train", "sentences": [{"raw": "caf\xe9"}]}]}, ensure_ascii=False
    )
    cfg = _karpathy(tmp_path, raw=("{\n" + content[1:]).encode("latin-1"))
    _raises(cfg, r"dataset_flickr30k.json:2: not UTF-8 text \(byte \d+ is 0xe9\)")
    cfg = _karpathy(tmp_path, raw=b"\xef\xbb\xbf" + content.encode())
    assert load_split(cfg, "train").captions == ["caf\xe9"]


def test_webdataset_captions_that_are_not_utf8(tmp_path):
    sample = shard_sample("000000", 0, captions=["a caption"])
    tar = write_plain_tar(
        tmp_path / "s" / "train-0.tar", [("000000.jpg", sample["jpg"]), ("000000.txt", b"fine\nna\xefve\n")]
    )
    _raises(
        DataConfig(kind="webdataset", manifest=str(tar)), rf"^{tar}::000000.txt:2: not UTF-8 text \(byte 7 is 0xef\)"
    )
    write_plain_tar(tar, [("000000.jpg", sample["jpg"]), ("000000.json", b'{"caption": "caf\xe9"}')])
    _raises(DataConfig(kind="webdataset", manifest=str(tar)), rf"^{tar}::000000.json:1: not UTF-8 text")


@pytest.mark.parametrize(
    "meta, pattern",
    [
        (b'{"captions": 5}', r"'captions' must be a string or a list of strings, not a number \(5\)"),
        (b'{"caption": {"a": "b"}}', r"'caption' must be a string or a list of strings, not an object"),
        (b'{"captions": ["a", 2]}', r"captions\[1\] must be a string \(a caption\), not a number \(2\)"),
        (b'{"caption": "a", "split": 3}', r"'split' must be a string \(one of train, .*\), not a number \(3\)"),
        (b'["a caption"]', r'must be a JSON object \(\{"caption": ...\}\), not a list'),
    ],
)
def test_webdataset_json_of_the_wrong_type(tmp_path, meta, pattern):
    tar = write_plain_tar(tmp_path / "s" / "train-0.tar", [("k.jpg", image_bytes(0, "JPEG")), ("k.json", meta)])
    _raises(DataConfig(kind="webdataset", manifest=str(tar)), rf"^{tar}::k.json:? {pattern}")


def test_webdataset_json_null_caption_is_no_caption(tmp_path):
    tar = write_plain_tar(
        tmp_path / "s" / "train-0.tar",
        [
            ("a.jpg", image_bytes(0, "JPEG")),
            ("a.json", b'{"caption": null, "split": null}'),
            ("b.jpg", image_bytes(1, "JPEG")),
            ("b.json", b'{"captions": null, "caption": "b one"}'),
        ],
    )
    assert load_split(DataConfig(kind="webdataset", manifest=str(tar)), "train").captions == ["b one"]


def test_hf_split_column_and_captions_of_the_wrong_type(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"image": ["ok.png"], "caption": ["x"], "split": [0]}), path)
    _raises(
        DataConfig(kind="hf", manifest=str(path)),
        rf"^{path}: column 'split' has type int64; it must hold text \(train, .*\)",
    )
    pq.write_table(pa.table({"image": ["ok.png"], "caption": [[1, 2]]}), path)
    _raises(
        DataConfig(kind="hf", manifest=str(path)),
        rf"^{path}: row 0: column 'caption' holds a value of type int, not text",
    )


def test_hf_save_to_disk_json_that_is_not_utf8_or_not_json(tmp_path):
    folder = tmp_path / "dd"
    folder.mkdir()
    (folder / "dataset_dict.json").write_bytes(b'{"splits": ["tr\xe9in"]}')
    _raises(DataConfig(kind="hf", manifest=str(folder)), r"dataset_dict.json:1: not UTF-8 text \(byte 15 is 0xe9\)")
    (folder / "dataset_dict.json").write_text('{"split": ["train"]}')
    _raises(DataConfig(kind="hf", manifest=str(folder)), r"dataset_dict.json is not as save_to_disk writes it")
    (folder / "dataset_dict.json").unlink()
    (folder / "state.json").write_text("{not json")
    _raises(DataConfig(kind="hf", manifest=str(folder)), r"state.json is not as save_to_disk writes it")
    (folder / "state.json").write_text('{"_data_files": [{"file": 1}]}')
    _raises(DataConfig(kind="hf", manifest=str(folder)), r"state.json: '_data_files' is not as save_to_disk writes it")
    (folder / "state.json").write_text('{"_data_files": [{"filename": "gone.arrow"}]}')
    _raises(
        DataConfig(kind="hf", manifest=str(folder)), r"arrow file not found: .*gone.arrow \(listed in .*state.json\)"
    )


def test_tuxpaint_caption_line_must_be_utf8(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "hen.png")
    (tmp_path / "hen.txt").write_bytes(b"A brown hen.\nfr.utf8=Une poule \xe9\n")  # only line 1 is read
    assert list_tuxpaint(tmp_path, []) == [(str(tmp_path / "hen.png"), "A brown hen.", "")]
    (tmp_path / "hen.txt").write_bytes(b"\xef\xbb\xbfA brown hen.\n")
    assert list_tuxpaint(tmp_path, [])[0][1] == "A brown hen."
    (tmp_path / "hen.txt").write_bytes(b"A caf\xe9 hen.\n")
    with pytest.raises(DsmdError, match=rf"^{tmp_path / 'hen.txt'}:1: not UTF-8 text \(byte 5 is 0xe9\)"):
        list_tuxpaint(tmp_path, [])
