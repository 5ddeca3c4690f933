"""The unpaired-data keys: what they accept, the rules that tie them to the rest of the config,
and that a config which does not use them is written and hashed exactly as before they existed."""

import pytest

from dsmd.config import UNPAIRED_LOSS_NAMES, RunConfig, config_to_dict, from_dict, load_config
from dsmd.errors import DsmdError
from dsmd.losses import UNPAIRED_LOSS_NAMES as LOSS_MODULE_NAMES
from dsmd.sweeps.spec import run_hash

POOLS = ["data.unpaired_images.kind=folder", "data.unpaired_images.path=/pool"]


def test_the_defaults_are_no_pools_and_one_unpaired_item_per_pair():
    cfg = RunConfig()
    assert cfg.data.unpaired_images.kind == "none" and cfg.data.unpaired_texts.kind == "none"
    assert cfg.train.unpaired_ratio == 1.0
    assert UNPAIRED_LOSS_NAMES == LOSS_MODULE_NAMES == ("u_cd", "u_fd", "u_sd", "u_hnd")


def test_keys_at_their_defaults_are_left_out_of_the_saved_config_and_the_hash():
    data = config_to_dict(RunConfig())
    assert "unpaired_images" not in data["data"] and "unpaired_texts" not in data["data"]
    assert "unpaired_ratio" not in data["train"]
    assert from_dict(RunConfig, data) == RunConfig()
    plain = load_config(None, ["train.epochs=3"])
    assert run_hash(load_config(None, ["train.epochs=3", "train.unpaired_ratio=1.0"])) == run_hash(plain)
    assert run_hash(load_config(None, ["train.epochs=3", "data.unpaired_texts.kind=none"])) == run_hash(plain)


def test_pools_and_ratios_that_are_set_are_saved_and_hashed():
    cfg = load_config(None, [*POOLS, "data.unpaired_texts.kind=lines", "data.unpaired_texts.path=t.txt"])
    data = config_to_dict(cfg)
    assert data["data"]["unpaired_images"] == {
        "kind": "folder",
        "path": "/pool",
        "column": "image",
        "root": None,
        "exclude": [],
        "limit": None,
    }
    assert data["data"]["unpaired_texts"]["kind"] == "lines"
    assert from_dict(RunConfig, data) == cfg
    assert run_hash(cfg) != run_hash(RunConfig())
    half = load_config(None, [*POOLS, "loss.losses=[cd, u_fd]", "train.unpaired_ratio=0.5"])
    assert config_to_dict(half)["train"]["unpaired_ratio"] == 0.5
    assert run_hash(half) != run_hash(load_config(None, [*POOLS, "loss.losses=[cd, u_fd]"]))


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (
            ["data.unpaired_images.kind=lines"],
            "'data.unpaired_images.kind': 'lines' is not allowed; choose one of none",
        ),
        (["data.unpaired_texts.kind=folder"], "'data.unpaired_texts.kind': 'folder' is not allowed"),
        (["data.unpaired_images.kind=folder"], "'data.unpaired_images.path': data.unpaired_images.kind=folder needs"),
        (["data.unpaired_texts.path=t.txt"], "'data.unpaired_texts.path': is set but data.unpaired_texts.kind is none"),
        (["data.unpaired_images.colum=x"], "unknown config key 'data.unpaired_images.colum'"),
        ([*POOLS, "data.unpaired_images.limit=0"], "'data.unpaired_images.limit': must be at least 1"),
        (["loss.losses=[cd, u_fd]"], "'loss.losses': u_fd learn from unpaired images or captions"),
        (["loss.losses=[u_cdd]"], "'u_cdd' is not allowed"),
        ([*POOLS, "teacher.kind=imported"], "'data.unpaired_images': imported features have no teacher"),
        ([*POOLS, "loss.losses=[u_fd]", "train.unpaired_ratio=0.3", "train.batch_size=8"], "= 2.4 unpaired items"),
        (
            [
                *POOLS,
                "loss.losses=[u_fd]",
                "train.unpaired_ratio=0.25",
                "train.batch_size=8",
                "train.grad_accum_steps=4",
            ],
            "divides into train.grad_accum_steps=4",
        ),
        ([*POOLS, "loss.losses=[u_fd]", "train.unpaired_ratio=0"], "= 0 unpaired items"),
        (["train.unpaired_ratio=-1"], "'train.unpaired_ratio': must be at least 0"),
    ],
)
def test_bad_unpaired_settings_are_refused_with_the_key(overrides, fragment):
    with pytest.raises(DsmdError) as info:
        load_config(None, overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_pools_without_unpaired_losses_and_a_zero_ratio_are_allowed():
    cfg = load_config(None, [*POOLS, "train.unpaired_ratio=0"])
    assert cfg.data.unpaired_images.kind == "folder"
    assert load_config(None, [*POOLS, "loss.losses=[u_sd]", "train.unpaired_ratio=0.25", "train.batch_size=8"])
