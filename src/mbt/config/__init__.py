"""The run config: typed sections (`schema`), YAML files and `--set` overrides (`loading`), key docs (`keys`).
The model's own settings, `MBTConfig`, live beside the model (`mbt.model.config`) and are re-exported here."""

from mbt.config.loading import (
           apply_overrides,
           build_config,
           load_config,
           parse_value,
           split_key,
           split_override,
)
from mbt.config.schema import SECTIONS, Config, DataConfig, TrainConfig
from mbt.errors import ConfigError
from mbt.media.settings import NORMALISATION_STATS
from mbt.model.config import MODALITY_KINDS, PRESETS, MBTConfig

__all__ = ["Config", "ConfigError", "DataConfig", "MBTConfig", "MODALITY_KINDS", "NORMALISATION_STATS", "PRESETS",
           "SECTIONS", "TrainConfig", "apply_overrides", "build_config", "load_config", "parse_value", "split_key",
           "split_override"]
