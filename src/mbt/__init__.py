"""mbt: the Multimodal Bottleneck Transformer (Nagrani et al., NeurIPS 2021) in PyTorch.

The public names are imported on first use (PEP 562 module `__getattr__`), so `import mbt` and the `mbt` command
line stay fast: torch is loaded only when a model, a classifier or a preprocessor is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "MBT": "mbt.model",
    "MBTOutput": "mbt.model",
    "MBTConfig": "mbt.model.config",
    "Config": "mbt.config",
    "ConfigError": "mbt.errors",
    "Classifier": "mbt.engine.classifier",
    "Preprocessor": "mbt.media.preprocess",
    "PreprocessorConfig": "mbt.media.settings",
}

__all__ = ["MBT", "MBTConfig", "MBTOutput", "Config", "ConfigError", "Classifier", "Preprocessor",
           "PreprocessorConfig", "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names resolve lazily below
    from mbt.config import Config
    from mbt.engine.classifier import Classifier
    from mbt.errors import ConfigError
    from mbt.media.preprocess import Preprocessor
    from mbt.media.settings import PreprocessorConfig
    from mbt.model import MBT, MBTOutput
    from mbt.model.config import MBTConfig


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mbt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
