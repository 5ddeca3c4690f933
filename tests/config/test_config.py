import dataclasses
import re
import typing

import pytest

from dsmd.config import (
    RunConfig,
    config_to_dict,
    from_dict,
    load_config,
    packaged_config,
    packaged_configs,
    save_config,
)
from dsmd.data.formats import KINDS as DATA_KINDS
from dsmd.errors import DsmdError
from dsmd.teachers import available_teachers


def test_defaults_follow_the_paper():
    cfg = RunConfig()
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size, cfg.train.epochs) == (1e-4, 1e-4, 64, 20)
    assert cfg.train.lr_decay_epochs == [10] and cfg.train.lr_decay == 0.1
    assert (cfg.loss.queue_size, cfg.loss.temperature, cfg.loss.margin) == (8192, 0.05, 0.0)
    assert cfg.balancer.temperature == 1.0 and cfg.balancer.mode == "dynamic"
    assert cfg.loss.losses == ["cd", "fd", "sd", "hnd"]


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\nloss:\n  temperature: 0.1\n")
    cfg = load_config(
        path,
        [
            "train.lr=3e-4",
            "loss.losses=[cd,fd]",
            "student.text_layers=null",
            "balancer.static_weights={cd: 2}",
            "train.augment=false",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.loss.temperature == 0.1
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.loss.losses == ["cd", "fd"]
    assert cfg.student.text_layers is None
    assert cfg.balancer.static_weights == {"cd": 2.0}
    assert cfg.train.augment is False


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("nosection.x=1", "unknown config key 'nosection'"),
        ("train.epochs=two", "expected an integer"),
        ("train.augment=3", "expected true or false"),
        ("train.lr", "must look like key=value"),
    ],
)
def test_bad_overrides_are_named(override, fragment):
    with pytest.raises(DsmdError, match=fragment):
        load_config(None, [override])


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["train.epochs=7", "student.vision_config={num_hidden_layers: 2}"])
    save_config(cfg, tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)
    assert from_dict(RunConfig, config_to_dict(cfg)) == cfg


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(DsmdError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(DsmdError, match="not valid YAML"):
        load_config(bad)


def test_every_packaged_config_loads():
    folder = packaged_config("demo").parent
    configs = sorted(folder.glob("*.yaml"))
    assert configs, "the package ships no config"
    for path in configs:
        load_config(path)
    with pytest.raises(DsmdError, match="no packaged config"):
        packaged_config("does-not-exist")


# -- the configs that ship ------------------------------------------------------------------

SHIPPED = packaged_configs()
PAPER = [name for name in SHIPPED if name.startswith("paper_")]


def test_the_expected_configs_ship():
    assert {
        "demo",
        "paper_f30k_beit3_base",
        "paper_f30k_beit3_large",
        "paper_coco_beit3_base",
        "paper_coco_beit3_large",
        "paper_f30k_clip_vitl14",
    } <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads_by_name_and_by_path(name):
    by_name = load_config(name)
    by_path = load_config(packaged_config(name))
    assert by_name == by_path
    assert by_name.teacher.kind in available_teachers()
    assert by_name.data.kind in DATA_KINDS
    # The run can be adapted from the command line, as the README shows.
    assert load_config(name, ["train.epochs=1"]).train.epochs == 1


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_carry_the_papers_hyper_parameters(name):
    cfg = load_config(name)
    t, loss, b = cfg.train, cfg.loss, cfg.balancer
    # docs/method.md, "Training (paper section 4.1.4)"
    assert (t.lr, t.weight_decay, t.batch_size, t.epochs) == (1e-4, 1e-4, 64, 20)
    assert (t.lr_decay_epochs, t.lr_decay, t.head_lr_scale) == ([10], 0.1, 1.0)
    assert cfg.student.image_size == 224 and t.augment
    assert (loss.queue_size, loss.temperature, loss.margin) == (8192, 0.05, 0.0)
    assert loss.losses == ["cd", "fd", "sd", "hnd"] and loss.hardest
    assert (b.mode, b.temperature) == ("dynamic", 1.0)
    assert cfg.teacher.normalize and cfg.data.kind == "karpathy"
    assert cfg.data.eval_captions_per_image == 5  # Flickr30k 1K: 5,000 captions; COCO 5K: 25,000
    assert cfg.student.vision == "google/vit-base-patch16-224-in21k"
    assert cfg.student.text == "bert-base-uncased"
    dataset = "coco" if "_coco_" in name else "flickr30k"
    assert cfg.data.manifest.endswith(f"dataset_{dataset}.json")
    if cfg.teacher.kind == "beit3":
        size = "large" if name.endswith("large") else "base"
        ckpt = "coco" if dataset == "coco" else "f30k"
        assert cfg.teacher.name_or_path.endswith(f"beit3_{size}_patch16_384_{ckpt}_retrieval.pth")
        assert cfg.teacher.tokenizer.endswith("beit3.spm")


def test_an_unknown_config_name_lists_the_packaged_ones():
    with pytest.raises(DsmdError, match="paper_f30k_beit3_base"):
        load_config("no_such_config")


# -- allowed values and ranges, checked when the config is made --------------------------------


def _declared(kind: str) -> list[tuple[str, object]]:
    """``(key, declaration)`` of every field with a ``Literal`` type (``choices``) or a range (``ranges``)."""
    out = []
    for section in ("data", "teacher", "student", "loss", "balancer", "train", ""):
        cls = typing.get_type_hints(RunConfig)[section] if section else RunConfig
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}" if section else f.name
            if kind == "choices" and typing.get_origin(hints[f.name]) is typing.Literal:
                out.append((key, typing.get_args(hints[f.name])))
            if (
                kind == "ranges"
                and {"ge", "gt"} & set(f.metadata)
                and hints[f.name] in (int, float, int | None, float | None)
            ):
                out.append((key, f.metadata))
    return out


@pytest.mark.parametrize("key, allowed", _declared("choices"), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_every_name_field_refuses_other_names_with_the_allowed_ones(key, allowed):
    with pytest.raises(DsmdError) as info:
        load_config(None, [f"{key}={allowed[0]}x"])
    message = str(info.value)
    assert f"config key '{key}': '{allowed[0]}x' is not allowed; choose one of {', '.join(allowed)}" in message
    assert f"did you mean '{allowed[0]}'" in message and "\n" not in message


@pytest.mark.parametrize("key, bounds", _declared("ranges"), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_every_ranged_field_refuses_values_below_its_range(key, bounds):
    low = bounds.get("ge", bounds.get("gt"))
    below = low - 1 if "ge" in bounds else low
    with pytest.raises(DsmdError, match=rf"config key '{re.escape(key)}': must be .*{low:g}.*, got"):
        load_config(None, [f"{key}={below}"])


def test_the_declarations_cover_the_keys_that_need_them():
    choices = {k for k, _ in _declared("choices")}
    ranges = {k for k, _ in _declared("ranges")}
    assert {
        "data.kind",
        "teacher.kind",
        "teacher.dtype",
        "balancer.mode",
        "balancer.window",
        "train.precision",
        "train.dist_backend",
        "store_dtype",
        "student.text_pooling",
    } <= choices
    assert {
        "train.epochs",
        "train.batch_size",
        "train.lr",
        "loss.temperature",
        "loss.queue_size",
        "balancer.temperature",
        "train.grad_accum_steps",
        "data.num_workers",
        "store_views",
    } <= ranges


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["loss.losses=[cd,cd]"], "names a loss twice"),
        (["loss.losses=[]"], "enable at least one"),
        (["loss.losses=[cd,xx]"], "'xx' is not allowed; choose one of cd, fd, sd, hnd"),
        (["train.batch_size=10", "train.grad_accum_steps=4"], "must divide into train.grad_accum_steps=4"),
        (["data.val_fraction=0.6", "data.test_fraction=0.5"], "leaves no training images"),
        (["balancer.mode=static", "balancer.static_weights={cd: 1, kd: 2}"], "names kd, which loss.losses"),
        (["balancer.static_weights={cd: -1}"], "'balancer.static_weights.cd': must be at least 0"),
        (["balancer.priors={clip: 4}"], "names clip, which loss.losses"),
        (["loss.losses=[cd, clip]", "balancer.priors={clip: 0}"], "'balancer.priors.clip': must be greater than 0"),
        (["train.device=gpu"], "'train.device': 'gpu' is not a device"),
        (["train.lr=.nan"], "must be a finite number"),
        (["teacher.kind=hf_clip"], "teacher.kind=hf_clip needs it"),
        (["store_views=2", "teacher.kind=imported"], "imported features have no augmented views"),
    ],
)
def test_rules_that_tie_fields_together(overrides, fragment):
    with pytest.raises(DsmdError, match=re.escape(fragment)):
        load_config(None, overrides)


def test_configs_made_in_code_are_checked_too():
    from dsmd.config import LossConfig, TrainConfig

    with pytest.raises(DsmdError, match="'train.epochs': must be at least 1, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(DsmdError, match="'loss.losses': 'kld' is not allowed"):
        LossConfig(losses=["kld"])
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)  # an int is a float


def test_with_overrides_is_the_one_way_to_change_a_config():
    from dsmd.config import with_overrides

    cfg = load_config("demo")
    changed = with_overrides(cfg, ["train.epochs=3", "loss.losses=[cd, fd]", "balancer.priors={}"])
    assert (changed.train.epochs, changed.loss.losses) == (3, ["cd", "fd"]) and cfg.train.epochs != 3
    with pytest.raises(DsmdError, match=r"'balancer.priors': names clip, .*\(balancer.priors=\{\} for none\)"):
        with_overrides(cfg, ["loss.losses=[cd, fd]"])  # the demo's prior on the CLIP loss names the fix
    with pytest.raises(DsmdError, match="unknown config key 'train.epoch'"):
        with_overrides(cfg, ["train.epoch=3"])


def test_numbers_written_without_a_dot_in_yaml_files_are_numbers(tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  lr: 1e-3\n  weight_decay: 5e-5\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.train.lr == 1e-3 and cfg.train.weight_decay == 5e-5
    with pytest.raises(DsmdError, match="'train.lr': expected a number, got 'fast'"):
        load_config(None, ["train.lr=fast"])
