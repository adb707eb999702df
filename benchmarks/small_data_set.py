"""A small audiovisual set made from real signals, for the small-data benchmark (`small_data.py`) and its tests.

Each clip is a 2 s H.264/AAC mp4: a handwritten digit (scikit-learn's `load_digits`, 8x8 scans of 43 writers)
drifting over a noisy canvas as 96x96 video at 10 fps, and the digit's name spoken by espeak-ng (a voice, speed and
pitch drawn per clip) over noise, as AAC at 22.05 kHz, 30 % of the files stereo. In `degraded` (default 60 %) of the
clips one modality, half the time each, carries no information: the video shows the canvas without the digit or the
audio plays the noise without the word. The label is unchanged, so neither stream alone can reach more than
1 - degraded / 2 + degraded / 2 / 10 (73 % for 60 %), while both together can reach 100 %: fusion is needed.

`variant="relation"`: two glyphs (digits `pair[0]`, `pair[1]`) x their two spoken names; the label is `same` when
the shown digit is the spoken one, else `different`. Glyph and word are each uniform and independent of the label,
so each stream alone is at chance (50 %) and late fusion cannot learn it; nothing is degraded.

Everything is drawn from `numpy.random.default_rng([seed, split, index])`, so a build is deterministic and its
clips independent of the number of processes; the digit images of the train and test splits are disjoint, voices
are shared. Other glyph sources (`glyphs=`: a (N, H, W) array in [0, 1] with labels), voices and seeds give other
sets of the same kind. Needs the `espeak-ng` program (Debian: `apt-get install espeak-ng`).

    PYTHONPATH=src python benchmarks/small_data_set.py OUT [--train 600] [--test 200] [--seed 0] [--variant ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import av
import numpy as np
from scipy.signal import lfilter

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "test")
# English voices of Debian's espeak-ng data and variants (`espeak-ng --voices=variant`): accents x timbres.
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan")
VARIANTS = ("m1", "m3", "m7", "f1", "f2", "f4", "croak", "klatt")
SECONDS, FPS, SIZE, SAMPLE_RATE = 2.0, 10, 96, 22050
STEREO_FRACTION = 0.3
MARKER = ".complete.json"
_VIDEO_OPTIONS = {"crf": "23", "preset": "veryfast", "threads": "1", "mbtree": "0"}  # deterministic x264


@dataclass
class SetSpec:
    """What a build draws from; saved beside the set, and a build with another spec is redone."""

    seed: int = 0
    num_train: int = 600
    num_test: int = 200
    variant: str = "classes"  # "classes" (10 digits) | "relation" (same / different)
    degraded: float = 0.6  # fraction of clips with one modality replaced by noise (classes variant)
    pair: tuple[int, int] = (3, 8)  # the two digits of the relation variant
    voices: tuple[str, ...] = VOICES
    voice_variants: tuple[str, ...] = VARIANTS
    speed: tuple[int, int] = (120, 220)  # espeak-ng words per minute
    pitch: tuple[int, int] = (20, 80)
    snr_db: tuple[float, float] = (0.0, 12.0)  # speech RMS over noise RMS while the word is spoken
    glyph_px: tuple[int, int] = (34, 50)  # drawn size of a digit on the 96 px canvas
    extra: dict = field(default_factory=dict)


@dataclass
class SmallSet:
    root: Path
    train: Path
    test: Path
    classes: Path
    class_names: list[str]
    meta: Path


def class_names(spec: SetSpec) -> list[str]:
    return ["same", "different"] if spec.variant == "relation" else list(DIGIT_NAMES)


# ==================================================================== glyphs
def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) digit images in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def glyph_pool(images: np.ndarray, labels: np.ndarray, split: str) -> dict[int, np.ndarray]:
    """Image indices of each label for a split: even positions of each label's list train, odd test (disjoint)."""
    pool = {}
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        pool[int(label)] = idx[0::2] if split == "train" else idx[1::2]
    return pool


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a small (h, w) glyph to (size, size)."""
    h, w = image.shape
    ys, xs = np.linspace(0, h - 1, size), np.linspace(0, w - 1, size)
    y0, x0 = np.minimum(ys.astype(int), h - 2), np.minimum(xs.astype(int), w - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None]
    a, b = image[y0][:, x0], image[y0][:, x0 + 1]
    c, d = image[y0 + 1][:, x0], image[y0 + 1][:, x0 + 1]
    return (a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx).astype(np.float32)


def _canvas(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A textured background (coarse noise upsampled) and the per-frame pixel noise level."""
    base = rng.uniform(50, 120, 3)
    coarse = rng.uniform(-30, 30, (6, 6, 3))
    texture = np.stack([_resize(coarse[..., c], SIZE) for c in range(3)], axis=-1)
    return base + texture, rng.uniform(8, 20)


def _video(rng: np.random.Generator, spec: SetSpec, glyph: np.ndarray | None) -> np.ndarray:
    """(T, 96, 96, 3) float frames of a glyph drifting in a straight line over a noisy canvas (None: no glyph)."""
    frames_n = round(SECONDS * FPS)
    background, noise = _canvas(rng)
    frames = np.repeat(background[None], frames_n, axis=0)
    size = int(rng.integers(*spec.glyph_px, endpoint=True))
    colour = rng.uniform(170, 255, 3)
    start = rng.uniform(0, SIZE - size, 2)
    end = rng.uniform(0, SIZE - size, 2)
    if glyph is not None:
        alpha = _resize(glyph, size)[..., None]
        for t in range(frames_n):
            y, x = np.rint(start + (end - start) * t / (frames_n - 1)).astype(int)
            patch = frames[t, y:y + size, x:x + size]
            frames[t, y:y + size, x:x + size] = patch * (1 - alpha) + colour * alpha
    frames += rng.normal(0, noise, frames.shape)
    return frames


# ==================================================================== speech
def espeak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """The word spoken by espeak-ng, float32 mono at 22.05 kHz, leading / trailing silence trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "w.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), word],
                       check=True, capture_output=True)
        with wave.open(str(out)) as w:
            if w.getframerate() != SAMPLE_RATE or w.getnchannels() != 1:
                raise RuntimeError(f"espeak-ng wrote {w.getframerate()} Hz x {w.getnchannels()}, expected 22050 x 1")
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(samples) > 0.02 * np.abs(samples).max())
    return samples[loud[0]:loud[-1] + 1] if len(loud) else samples


def _audio(rng: np.random.Generator, spec: SetSpec, word: str | None) -> tuple[np.ndarray, dict]:
    """(channels, N) float audio: the word (None: no word) at a random place over noise; mono or stereo."""
    n = round(SECONDS * SAMPLE_RATE)
    voice = f"{rng.choice(spec.voices)}+{rng.choice(spec.voice_variants)}"
    speed = int(rng.integers(*spec.speed, endpoint=True))
    pitch = int(rng.integers(*spec.pitch, endpoint=True))
    gain = rng.uniform(0.15, 0.5)
    snr_db = rng.uniform(*spec.snr_db)
    channels = 2 if rng.random() < STEREO_FRACTION else 1
    noise_colour = rng.uniform(0.0, 0.9)  # one-pole low-pass: white to reddish noise
    speech = np.zeros(n, np.float32)
    info = {"voice": voice, "speed": speed, "pitch": pitch, "snr_db": round(snr_db, 2), "channels": channels}
    if word is not None:
        spoken = espeak(word, voice, speed, pitch)[: n - 1]
        at = int(rng.integers(0, n - len(spoken)))
        speech[at:at + len(spoken)] = spoken
        speech *= gain / max(np.sqrt(np.mean(spoken ** 2)), 1e-6)
        info["word_at_s"] = round(at / SAMPLE_RATE, 3)
    noise_rms = gain / 10 ** (snr_db / 20)
    out = []
    for _ in range(channels):
        coloured = lfilter([1.0], [1.0, -noise_colour], rng.normal(0, 1, n))
        coloured *= noise_rms / coloured.std()
        pan = rng.uniform(0.6, 1.0) if channels == 2 else 1.0
        out.append(speech * pan + coloured)
    audio = np.stack(out).astype(np.float32)
    peak = np.abs(audio).max()
    if peak > 0.99:
        audio *= 0.99 / peak
    return audio, info


# ==================================================================== clips
def _plan(spec: SetSpec, split: str, n: int) -> list[dict]:
    """Per clip: label and degradation, balanced within the split (then shuffled by the split's stream)."""
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), 10**6])
    if spec.variant == "relation":
        cells = [(g, w) for g in range(2) for w in range(2)]
        plan = [{"glyph": spec.pair[g], "word": spec.pair[w], "label": "same" if g == w else "different",
                 "degraded": "none"} for i in range(n) for g, w in [cells[i % 4]]]
    else:
        k_video = round(n * spec.degraded / 2)
        k_audio = round(n * spec.degraded) - k_video
        kinds = ["video"] * k_video + ["audio"] * k_audio + ["none"] * (n - k_video - k_audio)
        kinds = [kinds[i] for i in rng.permutation(n)]
        plan = [{"glyph": i % 10, "word": i % 10, "label": DIGIT_NAMES[i % 10], "degraded": kinds[i]}
                for i in range(n)]
    order = rng.permutation(n)
    return [plan[i] for i in order]


def _write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray) -> None:
    frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    layout = "stereo" if audio.shape[0] == 2 else "mono"
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS, options=dict(_VIDEO_OPTIONS))
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=SAMPLE_RATE, layout=layout)
        sound.bit_rate = 64000 if layout == "stereo" else 48000
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            container.mux(video.encode(picture))
        container.mux(video.encode())
        samples = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout=layout)
        samples.sample_rate = SAMPLE_RATE
        samples.pts = 0
        container.mux(sound.encode(samples))
        container.mux(sound.encode())


def _make_clip(task: tuple[SetSpec, str, int, dict, str]) -> dict:
    spec, split, index, plan, out = task
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), index])
    images, labels = sklearn_digits() if "glyphs" not in spec.extra else _load_glyphs(spec.extra["glyphs"])
    pool = glyph_pool(images, labels, split)[plan["glyph"]]
    image_index = int(pool[rng.integers(len(pool))])
    glyph = None if plan["degraded"] == "video" else images[image_index]
    frames = _video(rng, spec, glyph)
    word = None if plan["degraded"] == "audio" else DIGIT_NAMES[plan["word"]]
    audio, info = _audio(rng, spec, word)
    path = Path(out) / "media" / f"{split}_{index:04d}.mp4"
    _write_mp4(path, frames, audio)
    return {"split": split, "path": f"media/{path.name}", **plan, "image": image_index, **info}


def _load_glyphs(source: str) -> tuple[np.ndarray, np.ndarray]:
    """An .npz with `images` (N, H, W) in [0, 1] and `labels` (N,) digits 0-9: other glyphs than sklearn's."""
    data = np.load(source)
    return data["images"].astype(np.float32), data["labels"].astype(np.int64)


def build_set(out_dir: str | Path, spec: SetSpec | None = None, *, jobs: int = 2, **overrides) -> SmallSet:
    """Write the set to `out_dir` (media/, train.csv, test.csv, classes.txt, meta.csv); reused if complete."""
    spec = spec or SetSpec()
    for key, value in overrides.items():
        if not hasattr(spec, key):
            raise ValueError(f"build_set: unknown option {key!r}")
        setattr(spec, key, value)
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    root = Path(out_dir)
    names = class_names(spec)
    result = SmallSet(root, root / "train.csv", root / "test.csv", root / "classes.txt", names, root / "meta.csv")
    wanted = json.dumps(asdict(spec), sort_keys=True, default=list, allow_nan=False)
    marker = root / MARKER
    if marker.is_file() and marker.read_text() == wanted:
        return result
    (root / "media").mkdir(parents=True, exist_ok=True)
    tasks = [(spec, split, i, plan, str(root)) for split, n in (("train", spec.num_train), ("test", spec.num_test))
             for i, plan in enumerate(_plan(spec, split, n))]
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            meta = list(pool.map(_make_clip, tasks, chunksize=16))
    else:
        meta = [_make_clip(t) for t in tasks]
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    for split in SPLITS:
        with (root / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "labels"])
            writer.writerows([m["path"], m["label"]] for m in meta if m["split"] == split)
    fields = sorted({k for m in meta for k in m})
    with result.meta.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(meta)
    marker.write_text(wanted)
    return result



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=("classes", "relation"), default="classes")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    built = build_set(args.out, SetSpec(seed=args.seed, num_train=args.train, num_test=args.test,
                                        variant=args.variant), jobs=args.jobs)
    print(json.dumps({k: str(v) for k, v in asdict(built).items()}, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
