"""mbt: the Multimodal Bottleneck Transformer (Nagrani et al., NeurIPS 2021) in PyTorch."""

from mbt.config import Config, ConfigError
from mbt.model import MBT, MBTOutput
from mbt.model.config import MBTConfig

__all__ = ["MBT", "MBTConfig", "MBTOutput", "Config", "ConfigError"]
__version__ = "0.1.0"
