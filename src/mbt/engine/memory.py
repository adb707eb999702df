"""A model that cannot fit is refused before it is built: its size is counted on the meta device and compared with
the memory the device has available, in one line naming the size keys."""

from __future__ import annotations

import os

import torch

from mbt.errors import ConfigError
from mbt.model import MBT
from mbt.model.config import MBTConfig

# fp32 weights + gradients + optimiser state (AdamW: two moments; SGD: momentum)
TRAINING_BYTES_PER_PARAMETER = {"adamw": 16, "sgd": 12}
INFERENCE_BYTES_PER_PARAMETER = 4


def available_bytes(device: torch.device) -> int | None:
    """Free memory of `device`: the GPU's free memory, else the machine's MemAvailable (None when unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_model_fits(config: MBTConfig, device: torch.device, bytes_per_parameter: int,
                     what: str = "training") -> int:
    """The parameter count; a ConfigError when the weights (and their training state) exceed free memory."""
    count = MBT.count_parameters(config)
    needed = count * bytes_per_parameter
    free = available_bytes(device)
    if free is not None and needed > free:
        raise ConfigError(
            f"model: {count:,} parameters (depth {config.depth}, width {config.width}, mlp_dim {config.mlp_dim}) "
            f"need {needed / 2**30:.1f} GiB for {what}, more than the {free / 2**30:.1f} GiB free on {device}")
    return count
