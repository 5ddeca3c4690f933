import pytest

from dsmd.config import (
    RunConfig,
    config_to_dict,
    from_dict,
    load_config,
    packaged_config,
    save_config,
)
from dsmd.errors import DsmdError


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
    cfg = load_config(path, ["train.lr=3e-4", "loss.losses=[cd,fd]", "student.text_layers=null",
                             "balancer.static_weights={cd: 2}", "train.augment=false"])
    assert cfg.train.epochs == 3 and cfg.loss.temperature == 0.1
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.loss.losses == ["cd", "fd"]
    assert cfg.student.text_layers is None
    assert cfg.balancer.static_weights == {"cd": 2.0}
    assert cfg.train.augment is False


@pytest.mark.parametrize("override, fragment", [
    ("train.lrr=1", "unknown config key 'train.lrr'"),
    ("nosection.x=1", "unknown config key 'nosection'"),
    ("train.epochs=two", "expected an integer"),
    ("train.augment=3", "expected true or false"),
    ("train.lr", "must look like key=value"),
])
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
