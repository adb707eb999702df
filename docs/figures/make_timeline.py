"""Makes docs/figures/timeline.png: `mbt predict --timeline` over a 24 s recording made of six clips of the
demo's `fusion` set (test split, clean, six different classes), with a bottleneck-fusion model trained on the
demo's training split (quick sizes). Takes ~10 minutes on 2 CPU cores.

    PYTHONPATH=src python docs/figures/make_timeline.py [--work /tmp/mbt-timeline]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from mbt import Classifier  # noqa: E402
from mbt.analysis.timeline import plot_timeline  # noqa: E402
from mbt.cli import main  # noqa: E402
from mbt.data.demo import build_demo_set  # noqa: E402
from media_factory import write_av  # noqa: E402  (the tests' media writer)


def decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        audio = np.concatenate([o.to_ndarray().reshape(-1) for f in container.decode(audio=0)
                                for o in resampler.resample(f)])
    return frames, audio


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/mbt-timeline"))
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    demo = build_demo_set(args.work / "data", variant="fusion", num_train=240, num_val=48, num_test=96)
    run = args.work / "run"
    if not (run / "model.safetensors").is_file():
        assert main(["train", "demo", "--out", str(run), "--no-progress", "--set", f"data.train={demo.train}",
                     "--set", f"data.val={demo.val}", "--set", f"data.classes={demo.classes}",
                     "--set", f"train.epochs={args.epochs}"]) == 0
    with demo.meta.open() as handle:
        meta = [r for r in csv.DictReader(handle) if r["split"] == "test" and r["corrupted"] == "none"]
    order = ["red_disc+hum", "blue_triangle+beeps", "green_square+hum", "yellow_cross+beeps",
             "red_disc+beeps", "blue_triangle+hum"]
    picked = [next(r for r in meta if r["label"] == label) for label in order]
    pieces = [decode(demo.root / r["path"]) for r in picked]
    frames = np.concatenate([f for f, _ in pieces])
    audio = np.concatenate([a for _, a in pieces])
    long = args.work / "six_clips.mp4"
    write_av(long, fps=8, seconds=len(frames) / 8, size=(frames.shape[2], frames.shape[1]),
             frame_fn=lambda i, t: frames[min(i, len(frames) - 1)],
             audio_fn=lambda t: audio[np.minimum((t * 16000).astype(int), len(audio) - 1)])
    print("clips:", ", ".join(f"{4 * i}-{4 * i + 4} s {label}" for i, label in enumerate(order)))
    # the command line's run (JSON), then the same timeline from Python with the true segments drawn above it
    assert main(["predict", str(run), str(long), "--timeline", "--hop", "0.5", "--out",
                 str(args.work / "timeline.json"), "--no-progress"]) == 0
    clf = Classifier.from_pretrained(run)
    timeline = clf.timeline(long, hop=0.5)
    segments = [(4.0 * i, 4.0 * i + 4, label) for i, label in enumerate(order)]
    print(plot_timeline(timeline, REPO / "docs" / "figures" / "timeline.png", preprocessor=clf.preprocessor, top=6,
                        segments=segments, title=f"mbt predict --timeline: six 4 s demo clips in a row, windows of "
                                             f"{timeline.window:g} s every {timeline.hop:g} s (bars: the true "
                                             "classes)"))


if __name__ == "__main__":
    main_()
