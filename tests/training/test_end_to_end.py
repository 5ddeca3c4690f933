"""extract -> train -> eval -> resume on generated images and tiny models, through the library and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from dsmd.cli import main
from dsmd.config import load_config
from dsmd.errors import DsmdError
from dsmd.extraction.extractor import extract
from dsmd.store import FeatureStore
from dsmd.training import train
from dsmd.training.checkpoint import load_checkpoint
from tiny_runs import tiny_run_overrides

pytestmark = pytest.mark.e2e  # whole commands on tiny models: the end-to-end tier

METRICS = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"}


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def tiny_run(tiny_models, synthetic_manifest, tmp_path_factory):
    """One store and one 2-epoch run on tiny models, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("e2e")
    overrides = tiny_run_overrides(tiny_models, synthetic_manifest, root)
    cfg = load_config("demo", overrides)  # what the CLI uses when no --config is given
    store = extract(cfg, progress=False, log=lambda *_: None)
    result = train(cfg, progress=False, log=lambda *_: None)
    return {"root": root, "overrides": overrides, "cfg": cfg, "store": store, "result": result}


def test_extract_stores_images_once_and_captions_each(tiny_run):
    store, root = tiny_run["store"], tiny_run["root"]
    train_split = store.split("train")
    assert train_split.image.shape == (12, 24) and train_split.text.shape == (24, 24)
    assert train_split.caption_image.tolist() == [i // 2 for i in range(24)]
    assert torch.allclose(train_split.image.norm(dim=-1), torch.ones(12), atol=1e-5)
    assert store.manifest["teacher"]["kind"] == "hf_clip" and store.manifest["normalized"] is True
    assert not (root / "store.partial").exists()


def test_extract_reuses_its_store_and_refuses_another(tiny_run):
    overrides = tiny_run["overrides"]
    again = extract(load_config(None, overrides), progress=False, log=lambda *_: None)
    assert again.manifest == tiny_run["store"].manifest
    with pytest.raises(DsmdError, match="built differently.*--overwrite"):
        extract(load_config(None, [*overrides, "teacher.normalize=false"]), progress=False, log=lambda *_: None)


def test_train_writes_logs_and_checkpoints(tiny_run):
    run = tiny_run["root"] / "run"
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 2 * 3  # 2 epochs x ceil(24 pairs / 8)
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert {"cd", "fd", "sd", "hnd", "w_cd", "w_hnd", "r_fd", "s_sd", "lr", "total"} <= set(steps[0])
    assert steps[-1]["lr"] == pytest.approx(1e-4)  # decayed after epoch 1
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "best.pt").is_file()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["config"]["train"]["epochs"] == 2
    assert {"optimizer", "objective", "balancer"} <= set(state)
    assert state["objective"]["queue.count"].item() == 16  # the queue wrapped: 48 pairs into 16 slots
    result = json.loads((run / "result.json").read_text())
    assert result["best_epoch"] == tiny_run["result"].best_epoch and result["steps"] == 6
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == result["best_epoch"]


def test_eval_scores_a_checkpoint_and_a_store(tiny_run, capsys):
    root = tiny_run["root"]
    code, out, err = _cli(
        ["eval", "--checkpoint", str(root / "run" / "checkpoints" / "best.pt"), "--split", "test", "--json"], capsys
    )
    assert code == 0, err
    assert METRICS <= set(json.loads(out)) and json.loads(out)["images"] == 6
    code, out, _ = _cli(["eval", "--store", str(root / "store"), "--split", "test", "--json"], capsys)
    assert code == 0 and METRICS <= set(json.loads(out))
    code, out, _ = _cli(["eval", "--store", str(root / "store"), "--split", "test"], capsys)
    assert code == 0 and "split test: 6 images, 12 captions" in out and "| RSUM |" in out


def test_a_run_resumed_after_an_epoch_matches_the_uninterrupted_one(tiny_run, capsys):
    root, overrides = tiny_run["root"], tiny_run["overrides"]
    state = load_checkpoint(root / "run" / "checkpoints" / "last.pt")
    short = [o for o in overrides if not o.startswith(("out_dir=", "train.epochs="))]
    # (through the CLI both times: its default config is the packaged demo config)
    code, _, err = _cli(["train", "--quiet", *short, "train.epochs=1", f"out_dir={root / 'run2'}"], capsys)
    assert code == 0, err
    code, _, err = _cli(["train", "--quiet", *short, f"out_dir={root / 'run2'}"], capsys)
    assert code == 2 and "--resume" in err
    code, _, err = _cli(["train", "--quiet", "--resume", f"out_dir={root / 'run2'}", "train.epochs=2"], capsys)
    assert code == 0, err
    resumed = load_checkpoint(root / "run2" / "checkpoints" / "last.pt")
    for key, value in state["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for key, value in state["objective"].items():
        torch.testing.assert_close(resumed["objective"][key], value, msg=key)
    assert resumed["balancer"] == state["balancer"]
    assert (root / "run2" / "steps.jsonl").read_text().count("\n") == 6


def test_store_for_other_data_or_teacher_is_refused(tiny_overrides, tmp_path):
    cfg = load_config(None, tiny_overrides)
    extract(cfg, progress=False, log=lambda *_: None)
    with pytest.raises(DsmdError, match="another dataset"):
        train(load_config(None, [*tiny_overrides, "data.split_seed=5"]), progress=False, log=lambda *_: None)
    with pytest.raises(DsmdError, match="built by teacher"):
        train(load_config(None, [*tiny_overrides, "teacher.kind=offline"]), progress=False, log=lambda *_: None)
    store = FeatureStore.open(tmp_path / "store")
    with pytest.raises(DsmdError, match="no split 'dev'"):
        store.split("dev")


def test_interrupted_extraction_resumes_and_never_looks_finished(tiny_overrides, tmp_path, monkeypatch):
    from dsmd.store import StoreWriter

    cfg = load_config(None, tiny_overrides)
    real = StoreWriter.write_split
    calls = []

    def crash_on_second(self, split, *args):
        calls.append(split)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, split, *args)

    monkeypatch.setattr(StoreWriter, "write_split", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        extract(cfg, progress=False, log=lambda *_: None)
    with pytest.raises(DsmdError, match="interrupted"):
        FeatureStore.open(tmp_path / "store")
    monkeypatch.setattr(StoreWriter, "write_split", real)
    messages = []
    store = extract(cfg, progress=False, log=messages.append)
    assert "train: already extracted (resuming)" in messages
    assert set(store.manifest["splits"]) == {"train", "val", "test"}


def test_consistent_views_are_stored_and_trained_on(tiny_overrides, tmp_path):
    import torch.nn.functional as F

    from dsmd.data.datasets import load_dataset
    from dsmd.data.transforms import load_image, view_of
    from dsmd.teachers import build_teacher

    cfg = load_config(None, [*tiny_overrides, "store_views=2", "train.augment=true"])
    store = extract(cfg, progress=False, log=lambda *_: None)
    feats = store.split("train")
    assert feats.image_views.shape == (12, 2, 24) and store.split("val").image_views is None
    # view v of image i is the teacher's feature of exactly that crop
    teacher = build_teacher(cfg.teacher, torch.device("cpu"))
    data = load_dataset(cfg.data)["train"]
    pixels = teacher.image_transform.view(load_image(data.image_paths[3]), view_of(3, 1))
    expected = F.normalize(teacher.encode_images(pixels[None]), dim=-1)[0]
    torch.testing.assert_close(feats.image_views[3, 1], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(feats.image_views[3, 0], feats.image_views[3, 1])
    # a store without views is a different store
    with pytest.raises(DsmdError, match="built differently"):
        extract(load_config(None, tiny_overrides), progress=False, log=lambda *_: None)
    with pytest.raises(DsmdError, match="holds 2 views"):
        train(
            load_config(None, [*tiny_overrides, "store_views=3", "train.augment=true"]),
            progress=False,
            log=lambda *_: None,
        )
    result = train(cfg, progress=False, log=lambda *_: None)
    assert result.steps == 6


def test_view_crops_are_fixed_and_resolution_independent():
    from PIL import Image

    from dsmd.data.transforms import ImageTransform, view_of

    assert view_of(5, 2) == view_of(5, 2) and view_of(5, 2) != view_of(5, 3) != view_of(6, 3)
    img = Image.linear_gradient("L").convert("RGB").resize((120, 80))
    small, large = (
        ImageTransform(size=16, mean=(0, 0, 0), std=(1, 1, 1)),
        ImageTransform(size=64, mean=(0, 0, 0), std=(1, 1, 1)),
    )
    a = small.view(img, view_of(1, 0))
    b = torch.nn.functional.avg_pool2d(large.view(img, view_of(1, 0))[None], 4)[0]
    assert (a - b).abs().mean() < 0.02  # the same region at two resolutions


def test_unnormalised_teacher_gives_an_unnormalised_student(tiny_overrides, tmp_path):
    """teacher.normalize=false (the paper's Table 6 ablation) reaches the student and its checkpoint."""
    from dsmd.data.datasets import load_split
    from dsmd.training.checkpoint import student_from_checkpoint

    cfg = load_config(None, [*tiny_overrides, "teacher.normalize=false", "train.max_steps=1", "train.epochs=1"])
    store = extract(cfg, progress=False, log=lambda *_: None)
    assert store.manifest["normalized"] is False
    assert not torch.allclose(store.split("train").image.norm(dim=-1), torch.ones(12), atol=1e-3)
    result = train(cfg, progress=False, log=lambda *_: None)
    student, _, state = student_from_checkpoint(result.best_checkpoint)
    assert state["normalized"] is False and student.normalize is False
    data = load_split(cfg.data, "test")
    tokens = student.tokenize(data.captions[:4])
    with torch.no_grad():
        text = student.encode_texts(tokens["input_ids"], tokens["attention_mask"])
    assert not torch.allclose(text.norm(dim=-1), torch.ones(4), atol=1e-3)


def test_validation_in_the_loop_sees_the_pixels_dsmd_eval_sees(tiny_overrides, tmp_path):
    """In-loop validation encodes the val split exactly as evaluating the checkpoint does.

    At 16 px the training cache would downsize the 32 px images first; validation must not.
    """
    from dsmd.data.datasets import load_split
    from dsmd.data.loader import ImageCache
    from dsmd.evaluation.student_eval import encode_split
    from dsmd.models import build_student
    from dsmd.training.setup import validation_cache

    cfg = load_config(None, [*tiny_overrides, "student.image_size=16"])
    data = load_split(cfg.data, "val")
    student = build_student(cfg.student, 24)
    cpu = torch.device("cpu")
    plain, _ = encode_split(student, data, 16, cpu)  # what dsmd eval computes
    cached, _ = encode_split(student, data, 16, cpu, validation_cache(cfg))
    assert torch.equal(cached, plain)
    downsized, _ = encode_split(student, data, 16, cpu, ImageCache(max_side=18))  # the training cache's size
    assert not torch.allclose(downsized, plain, atol=1e-4)  # so the check above can fail


def test_baseline_losses_train_and_are_logged(tiny_run, tmp_path):
    """Every baseline trains through the real step, balanced like DSMD's losses, on the shared store."""
    cfg = load_config(
        "demo",
        [
            *tiny_run["overrides"],
            f"out_dir={tmp_path / 'baselines'}",
            "loss.losses=[kd, hint, rkd, icl, clip, dcd]",
            "train.epochs=1",
        ],
    )
    result = train(cfg, progress=False, log=lambda *_: None)
    steps = [json.loads(line) for line in (tmp_path / "baselines" / "steps.jsonl").read_text().splitlines()]
    names = ["kd", "hint", "rkd", "icl", "clip", "dcd"]
    assert {*names, *(f"w_{n}" for n in names)} <= set(steps[-1])
    assert all(all(torch.isfinite(torch.tensor(s[n])) for n in names) for s in steps)
    assert sum(steps[-1][f"w_{n}"] for n in names) == pytest.approx(len(names))  # K * softmax
    assert result.best_checkpoint.is_file()
