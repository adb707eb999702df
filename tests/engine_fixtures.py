"""A tiny audiovisual classification set written as real mp4 files, and a matching config, for engine tests.

Two classes that each modality can tell apart on its own: "bright" clips show a light frame and play a high tone,
"dark" clips a dark frame and a low tone (with per-clip noise so that no two clips are identical).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from media_factory import write_av

CLASSES = ["bright", "dark"]


def write_toy_set(root: Path, num_clips: int = 12, seconds: float = 1.5, name: str = "train") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,labels"]
    for i in range(num_clips):
        label = CLASSES[i % 2]
        rng = np.random.default_rng(i)
        level = 200 if label == "bright" else 40
        freq = 1760.0 if label == "bright" else 330.0

        def frame_fn(index: int, t: float, level=level, rng=rng) -> np.ndarray:
            noise = rng.integers(-20, 20, (48, 64, 3))
            return np.clip(level + noise, 0, 255).astype(np.uint8)

        def audio_fn(t: np.ndarray, freq=freq, rng=rng) -> np.ndarray:
            return (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)

        path = root / "media" / f"{name}_{i:03d}.mp4"
        path.parent.mkdir(exist_ok=True)
        write_av(path, fps=8, seconds=seconds, size=(64, 48), frame_fn=frame_fn, audio_fn=audio_fn)
        rows.append(f"media/{path.name},{label}")
    manifest = root / f"{name}.csv"
    manifest.write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return manifest


def toy_config(root: Path, train: Path, val: Path | None = None, **train_overrides) -> Path:
    """A config in `root` for the toy set whose manifest is `train` (its classes file sits beside it)."""
    cfg = {
        "model": {"preset": "mbt-tiny", "depth": 2, "width": 32, "num_heads": 2, "mlp_dim": 64, "fusion_layer": 1,
                  "num_frames": 4, "image_size": 32, "spec_frames": 96, "num_mel_bins": 32, "drop_path_rate": 0.0},
        "data": {"train": str(train), "classes": str(train.parent / "classes.txt"), "fps": 8.0, "frame_stride": 2,
                 "normalisation": "ast"},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "optimizer": "adamw", "num_workers": 0,
                  "checkpoint_every": 2, "warmup_epochs": 0.0, **train_overrides},
    }
    if val is not None:
        cfg["data"]["val"] = str(val)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
