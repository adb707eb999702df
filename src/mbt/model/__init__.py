from mbt.model.config import MBTConfig
from mbt.model.fusion import FusionEncoder, fusion_schedule
from mbt.model.mbt import MBT, MBTOutput

__all__ = ["MBT", "MBTConfig", "MBTOutput", "FusionEncoder", "fusion_schedule"]
