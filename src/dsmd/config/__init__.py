"""Typed run configuration: dataclasses, YAML files and ``key=value`` overrides.

:mod:`~dsmd.config.schema` declares the sections and what each field accepts;
:mod:`~dsmd.config.checks` checks values against those declarations; :mod:`~dsmd.config.io`
reads, overrides and writes configs.
"""

from dsmd.config.io import (
    CONFIG_DIR,
    apply_override,
    config_to_dict,
    from_dict,
    load_config,
    packaged_config,
    packaged_configs,
    resolve_config_path,
    save_config,
    with_overrides,
)
from dsmd.config.schema import (
    BASELINE_LOSS_NAMES,
    LOSS_NAMES,
    TUXPAINT_ROOT,
    BalancerConfig,
    DataConfig,
    LossConfig,
    RunConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
)
from dsmd.config.unpaired import UNPAIRED_LOSS_NAMES, UnpairedImagesConfig, UnpairedTextsConfig

__all__ = [
    "CONFIG_DIR",
    "BASELINE_LOSS_NAMES",
    "LOSS_NAMES",
    "TUXPAINT_ROOT",
    "UNPAIRED_LOSS_NAMES",
    "BalancerConfig",
    "DataConfig",
    "LossConfig",
    "RunConfig",
    "StudentConfig",
    "TeacherConfig",
    "TrainConfig",
    "UnpairedImagesConfig",
    "UnpairedTextsConfig",
    "apply_override",
    "config_to_dict",
    "from_dict",
    "load_config",
    "packaged_config",
    "packaged_configs",
    "resolve_config_path",
    "save_config",
    "with_overrides",
]
