"""The embedded demo set: its tasks (`tasks`) and its builder (`build`)."""

from mbt.data.demo.build import DemoSet, build_demo_set
from mbt.data.demo.tasks import VARIANTS, class_names

__all__ = ["DemoSet", "VARIANTS", "build_demo_set", "class_names"]
