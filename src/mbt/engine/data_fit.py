"""Settings a config leaves to the training data, resolved once when a run starts.

- `data.fit_windows: true`: `data.frame_stride` so the video frames span the median training clip, and
  `model.spec_frames` so the audio window is the clip rather than padding (`mbt.data.window`). A 2 s clip is
  otherwise sampled by the tiny preset as 0.64 s of video and a 4 s audio window half silence.
- `data.normalisation: dataset`: the spectrogram mean / std of the training set (as `mbt data stats` measures
  them, over the fitted window), so that the inputs have zero mean and unit variance.

Both are written into the run's `train_config.yaml` and the model's `preprocessor.json`, so evaluation and
prediction see what training saw. Both are deterministic (seeded samples of the manifest): a resumed run resolves
them to the same values, and a config that already holds them (the run's own train_config.yaml) keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence

from mbt.config import Config
from mbt.data.stats import spectrogram_stats
from mbt.data.window import fit_window, probe_durations
from mbt.errors import DataError

STATS_CLIPS = 256  # clips the dataset statistics are measured over (a 256-clip sample is within 1% on AudioSet)


def resolve_data_settings(cfg: Config, rows: Sequence) -> list[str]:
    """Fill in what `cfg` leaves to the data (in place; validated on assignment); returns what was set, one line
    each, for the run's log."""
    changes: list[str] = []
    data, model = cfg.data, cfg.model
    if data.fit_windows:
        fit = fit_window(cfg.preprocessor(stats=(0.0, 1.0)), probe_durations(rows, seed=cfg.train.seed),
                         model.spec_patch[0])
        if fit is None:
            raise DataError(f"data.fit_windows: none of the probed clips of {data.train} could be read")
        for key, value in fit.fitting_settings().items():
            section, name = key.split(".")
            target = data if section == "data" else model
            if getattr(target, name) != value:
                changes.append(f"data.fit_windows: {key} {getattr(target, name)} -> {value} "
                               f"(median clip {fit.clip_seconds:.2f} s)")
                setattr(target, name, value)
    if data.normalisation == "dataset" and (data.spec_mean is None or data.spec_std is None):
        stats = spectrogram_stats(data.train, cfg, max_clips=STATS_CLIPS, seed=cfg.train.seed, progress=False)
        if not stats.clips or not stats.spec_std:
            raise DataError(f"data.normalisation 'dataset': no clip of {data.train} gave a spectrogram "
                            "(`mbt data check` tells why)")
        data.spec_mean, data.spec_std = round(stats.spec_mean, 6), round(stats.spec_std, 6)
        changes.append(f"data.normalisation 'dataset': spec_mean {data.spec_mean:.6g}, spec_std "
                       f"{data.spec_std:.6g} over {stats.clips} clips")
    return changes
