"""Training-loader throughput (issue 19): CPU time per clip through the real `torch.utils.data.DataLoader`.

Inputs at the paper's sizes (mbt-base: 32 frames at stride 2 of 25 fps, 224 crop; 8 s of audio as an 800 x 128
Kaldi fbank; `audio_window: proportional` as the AudioSet recipe), from two sources:
- "originals": 10 s 320x240 25 fps H.264 (High profile, B-frames, a keyframe every 2 s) with 44.1 kHz stereo AAC,
  moving textures and noise, as downloaded;
- "transcoded": the same after `mbt data transcode` with its command-line defaults.

Loader figures: `ClipDataset` + `collate` exactly as `mbt train` builds them (training: random window, scale
jitter, crop, flip, colour draws, SpecAugment, the video left as the uint8 crop for `finish_video` on the training
device; evaluation: 4 views a file, short-side resize, centre crop, floats), through a `DataLoader` with
`--workers` workers (fresh workers every epoch, as the engine's), batch 8. The cost of a clip is the workers' CPU
time (user + system, `getrusage(RUSAGE_CHILDREN)` after the workers have exited, start-up included) divided by
the clips: clips/s/core = clips / worker CPU seconds, independent of how busy the machine is. The main process's
own CPU time, and the per-batch `finish_video` (floats + colour) measured on this CPU, are reported beside it: on a
GPU machine that part runs on the device.

Breakdown: the stages timed one by one in this process (one thread) over the same clips and windows: decode video,
decode audio, crop/resize (+ flip), colour, float/normalise, fbank (+ SpecAugment). The two decodes each open the
file, so they add up to slightly more than the loader's one open. Also a comparison of PyAV decoder threads (one
thread vs thread_type AUTO) in CPU time and wall time.

    PYTHONPATH=src python benchmarks/loader.py [--workers 2] [--files 16] [--epochs 4] [--media DIR]
        [--device cpu|cuda] [--quick]

Prints JSON and saves it to benchmarks/results/loader-<machine>.json (not with --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from media import textured  # noqa: E402  (moving, noisy frames: the decoder does realistic work)

from mbt.bars import bar  # noqa: E402
from mbt.cli import build_parser  # noqa: E402
from mbt.data.datasets import ClipDataset, collate, epoch_seed, loader_worker_init  # noqa: E402
from mbt.data.manifest import ManifestRow, read_manifest, write_manifest  # noqa: E402
from mbt.fileio import dumps as strict_dumps  # noqa: E402
from mbt.media import Preprocessor, PreprocessorConfig, transforms  # noqa: E402
from mbt.media.decode import decode_clip  # noqa: E402
from mbt.media.preprocess import _audio_window  # noqa: E402
from media_factory import write_av  # noqa: E402  (the tests' media writer)

PAPER = PreprocessorConfig(num_frames=32, fps=25.0, frame_stride=2, image_size=224, short_side=256,
                           num_mel_bins=128, spec_frames=800, spec_mean=-4.2677393, spec_std=2 * 4.5689974,
                           audio_window="proportional")
CLASSES = ["a", "b", "c", "d"]
BATCH = 8


def noise_audio(t: np.ndarray) -> np.ndarray:
    """Stereo noise with a slow tone: nothing an encoder can make free."""
    rng = np.random.default_rng(int(t[0] * 44100))
    tone = 0.2 * np.sin(2 * np.pi * 330 * t)
    return np.clip(tone + 0.15 * rng.standard_normal((2, len(t))), -1, 1)


def make_originals(folder: Path, count: int) -> Path:
    """`count` 10 s 320x240 H.264/AAC clips and their manifest (kept between runs when `folder` is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in bar(range(count), desc="writing 320x240 clips", leave=False):
        path = folder / f"clip{i:03d}.mp4"
        if not path.exists():
            part = folder / f".clip{i:03d}.part.mp4"
            write_av(part, seconds=10.0, size=(320, 240), fps=25, gop=50, sample_rate=44100, channels=2,
                     frame_fn=textured((320, 240), i), audio_fn=noise_audio)
            part.rename(path)
        rows.append(ManifestRow(path, (CLASSES[i % len(CLASSES)],), None, None, line=i + 2))
    write_manifest(folder / "train.csv", rows)
    return folder / "train.csv"


def transcode_with_defaults(manifest: Path, out: Path, jobs: int) -> tuple[Path, list[str]]:
    """`mbt data transcode MANIFEST --out OUT --jobs N`, through the command's own parser and defaults."""
    argv = ["data", "transcode", str(manifest), "--out", str(out), "--jobs", str(jobs)]
    args = build_parser().parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # its summary; stdout is the JSON
        code = args.func(args)
    if code != 0:
        raise SystemExit(f"transcode failed (exit {code})")
    defaults = [f"--short-side {args.short_side}", f"--gop {args.gop}", f"--fps {args.fps:g}"]
    return out / manifest.name, defaults


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Epochs(Dataset):
    """`epochs` epochs of a ClipDataset as one index range (item k: epoch k // n, index k % n), so one set of
    workers serves them all, as in an epoch of a real data set (thousands of clips per worker). Each item is still
    the function of (seed, epoch, index) the engine's is."""

    def __init__(self, dataset: ClipDataset, epochs: int):
        self.dataset, self.epochs = dataset, epochs

    def __len__(self) -> int:
        return len(self.dataset) * self.epochs

    def __getitem__(self, k: int):
        epoch, index = divmod(k, len(self.dataset))
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


def worker_startup(workers: int) -> float:
    """CPU seconds per worker of starting and stopping DataLoader workers that do nothing (fork, loop, exit)."""
    loader = DataLoader(list(range(workers)), batch_size=1, num_workers=workers)
    before = child_cpu()
    for _ in loader:
        pass
    del loader
    return (child_cpu() - before) / workers


def loader_pass(rows: list[ManifestRow], *, train: bool, workers: int, epochs: int, device: str = "cpu") -> dict:
    """Clips through the DataLoader: worker CPU time per clip, main-process CPU time, and finish_video on `device`
    (CPU time on the CPU; on CUDA the wall time of the copy + finish, synchronised)."""
    pre = Preprocessor(PAPER)
    dataset = ClipDataset(rows, CLASSES, pre, train=train, modalities=("video", "audio"), seed=0,
                          num_clips=4, deferred_video=True)
    items = Epochs(dataset, epochs if train else 1)
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    cuda = device == "cuda"
    loader = DataLoader(items, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                        worker_init_fn=loader_worker_init, pin_memory=cuda)  # as the engine's
    clips = skipped = 0
    finish_cpu = 0.0
    before_children, before_main, before_wall = child_cpu(), time.process_time(), time.perf_counter()
    for batch in bar(loader, desc="train" if train else "eval", leave=False):
        clips += len(batch["row"])
        skipped += len(batch["skipped"])
        if "colour" in batch:  # what the training device does with the batch
            started = time.perf_counter() if cuda else time.process_time()
            transforms.finish_video(batch["inputs"]["video"].to(device, non_blocking=True),
                                    batch["colour"].to(device), PAPER.value_range)
            if cuda:
                torch.cuda.synchronize()
            finish_cpu += (time.perf_counter() if cuda else time.process_time()) - started
    wall = time.perf_counter() - before_wall
    del loader  # the iterator is exhausted and its workers have exited: their CPU time is in RUSAGE_CHILDREN
    worker_cpu = child_cpu() - before_children
    main_cpu = time.process_time() - before_main - finish_cpu
    if skipped:
        raise SystemExit(f"{skipped} clips were skipped: the benchmark media are broken")
    return {"clips": clips, "workers": workers, "worker_cpu_s": round(worker_cpu, 3),
            "worker_cpu_ms_per_clip": round(1000 * worker_cpu / clips, 1),
            "clips_per_s_per_core": round(clips / worker_cpu, 2),
            # the whole loader on the wall clock (all workers together, start-up included; busy machines slow it)
            "wall_clips_per_s": round(clips / wall, 2),
            "main_process_cpu_ms_per_clip": round(1000 * main_cpu / clips, 1),
            f"finish_video_on_{device}_ms_per_clip": round(1000 * finish_cpu / clips, 2)}


def train_spectrogram(pre: Preprocessor, wave: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    cfg = pre.cfg
    return transforms.spec_augment(pre.spectrogram(wave), generator, cfg.freq_mask_count, cfg.freq_mask_width,
                                   cfg.time_mask_count, cfg.time_mask_width)


def eval_crop(frames: torch.Tensor) -> torch.Tensor:
    return transforms.crop(transforms.resize_short_side(frames, PAPER.short_side), PAPER.image_size)


def eval_float(crop: torch.Tensor) -> torch.Tensor:
    return transforms.to_model_range(transforms.to_float(crop), PAPER.value_range)


def breakdown(rows: list[ManifestRow], *, train: bool, epochs: int) -> dict:
    """Milliseconds of CPU per clip of each stage, in this process, on one thread, over the loader's windows."""
    cfg, pre = PAPER, Preprocessor(PAPER)
    stages = dict.fromkeys(["decode_video", "decode_audio", "crop_resize", "colour", "float_normalise", "fbank"],
                           0.0)
    whole = 0.0
    clips = 0

    def timed(name: str, fn, *args, **kwargs):
        started = time.process_time()
        out = fn(*args, **kwargs)
        stages[name] += time.process_time() - started
        return out

    views = [(epoch, i, None) for epoch in range(epochs) for i in range(len(rows))] if train else \
        [(0, i, p) for i in range(len(rows)) for p in (0.0, 1 / 3, 2 / 3, 1.0)]
    for epoch, i, position in bar(views, desc=f"breakdown {'train' if train else 'eval'}", leave=False):
        path = rows[i].path
        seed = epoch_seed(0, epoch, i)
        generator = torch.Generator().manual_seed(seed)
        started = time.process_time()
        if train:
            pre(path, train=True, generator=torch.Generator().manual_seed(seed), deferred=True)
        else:
            pre(path, train=False, position=position)
        whole += time.process_time() - started
        if train:
            position = torch.rand((), generator=generator).item()
        window = dict(num_frames=cfg.num_frames, fps=cfg.fps, frame_stride=cfg.frame_stride,
                      audio_seconds=cfg.audio_seconds, sample_rate=cfg.sample_rate, position=position,
                      audio_window=_audio_window(cfg.audio_window, train, True))
        side = int(np.ceil(cfg.short_side * cfg.scale_jitter[1])) if train else cfg.short_side
        frames = timed("decode_video", decode_clip, path, audio=False, max_short_side=side, **window).video
        wave = timed("decode_audio", decode_clip, path, video=False, **window).audio
        if train:
            crop, colour = timed("crop_resize", pre.video_crop, frames, generator)
            # the loader only draws the colour (inside crop_resize); this is the work finish_video does per clip
            video = timed("float_normalise", transforms.to_float, crop)
            timed("colour", transforms.apply_colour, video.unsqueeze(1), colour[None])
            timed("float_normalise", transforms.to_model_range, video, cfg.value_range)
            timed("fbank", train_spectrogram, pre, wave, generator)
        else:
            crop = timed("crop_resize", eval_crop, frames)
            timed("float_normalise", eval_float, crop)
            timed("fbank", pre.spectrogram, wave)
        clips += 1
    result = {f"{name}_ms": round(1000 * seconds / clips, 1) for name, seconds in stages.items()}
    if train:
        result["in_loader_ms"] = round(result["decode_video_ms"] + result["decode_audio_ms"] +
                                       result["crop_resize_ms"] + result["fbank_ms"], 1)
        result["on_device_ms"] = round(result["colour_ms"] + result["float_normalise_ms"], 1)
        result["note"] = ("colour and float_normalise run per batch on the training device (finish_video); "
                          "in_loader_ms is the rest")
    result["preprocessor_call_ms"] = round(1000 * whole / clips, 1)
    return result


def decoder_threads(rows: list[ManifestRow], frames: int = 90) -> dict:
    """CPU and wall time to decode `frames` frames (a window with its GOP pre-roll) per file, by thread setting."""
    result = {}
    for name in ("single", "auto"):
        cpu, wall = [], []
        for row in rows:
            started_cpu, started_wall = time.process_time(), time.perf_counter()
            with av.open(str(row.path)) as container:
                stream = container.streams.video[0]
                if name == "single":
                    stream.codec_context.thread_count = 1
                else:
                    stream.codec_context.thread_type = "AUTO"
                    stream.codec_context.thread_count = 0
                for _, _frame in zip(range(frames), container.decode(stream)):
                    pass
            cpu.append(time.process_time() - started_cpu)
            wall.append(time.perf_counter() - started_wall)
        result[name] = {"cpu_ms": round(1000 * statistics.mean(cpu), 1), "wall_ms": round(1000 * statistics.mean(wall), 1)}
    result["frames_per_file"] = frames
    return result


def machine() -> dict:
    model = platform.processor()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"host": socket.gethostname(), "platform": platform.platform(), "cpu_model": model,
            "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "torch": torch.__version__, "av": av.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (>= 2; default 2)")
    parser.add_argument("--files", type=int, default=16, help="source clips (default 16)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs over the files (default 4)")
    parser.add_argument("--media", type=Path, default=None, help="keep the generated clips here (reused)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where finish_video (floats + colour of each training batch) is timed")
    parser.add_argument("--quick", action="store_true", help="4 files, 1 epoch, nothing saved (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.quick:
        args.files, args.epochs = 4, 1
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        media = args.media or Path(tmp) / "media"
        manifest = make_originals(media / "originals", args.files)
        out = media / "transcoded"
        transcoded, defaults = transcode_with_defaults(manifest, out, jobs=min(args.workers, os.cpu_count() or 1))
        sources = {"originals": read_manifest(manifest), "transcoded": read_manifest(transcoded)}
        result: dict = {"benchmark": "loader", "machine": machine(), "workers": args.workers,
                        "inputs": {"video": "32 frames at stride 2 of 25 fps, 224 crop (short side 256, scale "
                                            "jitter 0.9-1.33, flip, colour jitter 0.8 / drop 0.1)",
                                   "audio": "8.015 s at 16 kHz, 800 x 128 Kaldi fbank, 1 frequency mask",
                                   "audio_window": PAPER.audio_window},
                        "sources": {"originals": f"{args.files} x 10 s 320x240 25 fps H.264 High (keyframe every "
                                                 "50 frames), AAC 44.1 kHz stereo",
                                    "transcoded": f"mbt data transcode (defaults: {' '.join(defaults)})"},
                        "loader": {}, "breakdown": {}}
        for source, rows in sources.items():
            suffix = "" if source == "originals" else "_transcoded"
            for mode, train in (("train", True), ("eval", False)):
                figures = loader_pass(rows, train=train, workers=args.workers, epochs=args.epochs,
                                      device=args.device)
                result["loader"][f"{mode}_{source}"] = figures
                result[f"{mode}_clips_per_s_per_core{suffix}"] = figures["clips_per_s_per_core"]
                result["breakdown"][f"{mode}_{source}"] = breakdown(rows, train=train, epochs=1)
            result.setdefault("decoder_threads", {})[source] = decoder_threads(rows)
    result["worker_startup_cpu_ms"] = round(1000 * worker_startup(args.workers), 1)
    result["targets"] = {"train_clips_per_s_per_core": 10, "train_clips_per_s_per_core_transcoded": 19}
    result["targets_met"] = all(result[k] >= v for k, v in result["targets"].items())
    text = strict_dumps(result, indent=1)
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"loader-{socket.gethostname() or platform.machine()}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
