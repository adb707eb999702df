"""Decode + front end throughput: our loader against the peers' approach, and long-GOP 720p before/after transcode.

(a) ours: `Preprocessor(train=False)` with the paper's inputs (32 frames at stride 2 of 25 fps, 224 crop, 800 x 128
Kaldi fbank): one seek per modality, sequential decoding, frames scaled by the decoder.
(b) peers: audio through an `ffmpeg` subprocess per sample decoding the whole file to 16 kHz mono (without ffmpeg on
PATH: PyAV opening the file a second time and decoding the whole audio stream), video by seeking to each of the
32 frame times separately and decoding one frame (OpenCV `CAP_PROP_POS_FRAMES` style), then the same resize, crop
and fbank, so only the decoding strategy differs.
(c) random clips from long-GOP (keyframe every 250 frames) 1280x720 files, before and after `mbt.data.transcode`
(short side 256, GOP 16).

Everything runs on one thread (torch and the decoders), so clips/s is per core. The media are generated in a
temporary folder. Prints JSON and saves it to benchmarks/results/media-<machine>.json.

    PYTHONPATH=src python benchmarks/media.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mbt.data.transcode import transcode_file  # noqa: E402
from mbt.fileio import dumps as strict_dumps  # noqa: E402
from mbt.media import Preprocessor, PreprocessorConfig, transforms  # noqa: E402
from media_factory import write_av  # noqa: E402  (the tests' media writer)

PAPER = PreprocessorConfig(num_frames=32, fps=25.0, frame_stride=2, image_size=224, short_side=256,
                           num_mel_bins=128, spec_frames=800, spec_mean=-4.2677393, spec_std=2 * 4.5689974)


def textured(size: tuple[int, int], seed: int):
    """frame_fn of moving, noisy content, so the encoder and decoder do realistic work (flat frames are free)."""
    width, height = size
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 40, (height + 64, width + 64, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]

    def frame(i: int, t: float) -> np.ndarray:
        base = 100 + 80 * np.sin(xx / 37.0 + t * 3.0) * np.cos(yy / 23.0 - t * 2.0)
        shift = (i * 3) % 64
        pixels = base[..., None] + noise[shift:shift + height, shift:shift + width]
        return np.clip(pixels, 0, 255).astype(np.uint8)
    return frame


def speech_like(t: np.ndarray) -> np.ndarray:
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return 0.3 * envelope * np.sin(2 * np.pi * (220 + 80 * np.sin(2 * np.pi * 0.5 * t)) * t)


def peers_clip(path: Path, position: float, cfg: PreprocessorConfig, use_ffmpeg: bool) -> dict[str, torch.Tensor]:
    """The peers' loader: whole-file audio per sample, one seek per video frame."""
    if use_ffmpeg:
        raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-i", str(path), "-vn", "-ac",
                              "1", "-ar", str(cfg.sample_rate), "-f", "f32le", "-"], capture_output=True,
                             check=True).stdout
        wave = np.frombuffer(raw, np.float32)
    else:
        with av.open(str(path)) as container:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=cfg.sample_rate)
            pieces = [out.to_ndarray()[0] for frame in container.decode(audio=0) for out in resampler.resample(frame)]
            wave = np.concatenate(pieces)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        duration = container.duration / av.time_base
        video_seconds = cfg.num_frames * cfg.frame_stride / cfg.fps
        start = position * max(duration - video_seconds, 0.0)
        frames = []
        for i in range(cfg.num_frames):
            target = start + i * cfg.frame_stride / cfg.fps
            container.seek(int(target / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.time >= target - 0.5 / cfg.fps:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    break
    audio_start = round(position * max(len(wave) / cfg.sample_rate - cfg.audio_seconds, 0.0) * cfg.sample_rate)
    window = torch.from_numpy(wave[audio_start:audio_start + round(cfg.audio_seconds * cfg.sample_rate)].copy())
    pre = Preprocessor(cfg)
    video = transforms.crop(transforms.resize_short_side(torch.from_numpy(np.stack(frames)), cfg.short_side),
                            cfg.image_size)
    return {"video": transforms.to_model_range(transforms.to_float(video)), "audio": pre.spectrogram(window)}


def clips_per_second(name: str, load, jobs: list[tuple[Path, float]]) -> float:
    load(*jobs[0])  # warm-up: imports, codec tables
    started = time.perf_counter()
    for job in tqdm(jobs, desc=name, leave=False):
        load(*job)
    return len(jobs) / (time.perf_counter() - started)


def positions(count: int, seed: int) -> list[float]:
    return torch.rand(count, generator=torch.Generator().manual_seed(seed)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer files and clips (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_small, n_large, clips_each = (2, 1, 3) if args.quick else (4, 2, 8)
    use_ffmpeg = shutil.which("ffmpeg") is not None
    ours = Preprocessor(PAPER)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small, large = [], []
        for i in tqdm(range(n_small), desc="writing 320x240 files", leave=False):
            small.append(write_av(tmp / f"small{i}.mp4", seconds=10.0, size=(320, 240), fps=25, gop=50,
                                  sample_rate=44100, channels=2, frame_fn=textured((320, 240), i),
                                  audio_fn=speech_like, codec_options={"preset": "veryfast"}).path)
        for i in tqdm(range(n_large), desc="writing long-GOP 720p files", leave=False):
            large.append(write_av(tmp / f"large{i}.mp4", seconds=10.0, size=(1280, 720), fps=25, gop=250,
                                  sample_rate=44100, channels=2, frame_fn=textured((1280, 720), 100 + i),
                                  audio_fn=speech_like, codec_options={"preset": "veryfast"}).path)
        transcoded = {path: tmp / f"{path.stem}_256.mp4" for path in large}
        for path, out in tqdm(transcoded.items(), desc="transcoding", leave=False):
            transcode_file(path, out, short_side=256, gop=16)

        def load_ours(path: Path, position: float) -> None:
            ours(path, train=False, position=position)

        def load_peers(path: Path, position: float) -> None:
            peers_clip(path, position, PAPER, use_ffmpeg)

        small_jobs = [(p, pos) for i, p in enumerate(small) for pos in positions(clips_each, i)]
        ours_small = clips_per_second("ours 320x240", load_ours, small_jobs)
        peers_small = clips_per_second("peers 320x240", load_peers, small_jobs)
        large_jobs = [(p, pos) for i, p in enumerate(large) for pos in positions(clips_each, 100 + i)]
        original = clips_per_second("long-GOP 720p", load_ours, large_jobs)
        after = clips_per_second("transcoded", load_ours, [(transcoded[p], pos) for p, pos in large_jobs])

    result = {
        "benchmark": "media",
        "machine": {"host": socket.gethostname(), "platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "av": av.__version__,
                    "ffmpeg": (subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout
                               .split("\n")[0] if use_ffmpeg else None)},
        "threads": 1,
        "inputs": {"video": "32 frames, stride 2 at 25 fps, 224 centre crop of short side 256",
                   "audio": "8.015 s at 16 kHz, 800 x 128 Kaldi fbank"},
        "decode_320x240": {
            "files": f"{n_small} x 10 s, 25 fps, 320x240 H.264 (keyframe every 50 frames), AAC 44.1 kHz stereo",
            "clips": len(small_jobs),
            "ours_clips_per_s": round(ours_small, 2),
            "peers_clips_per_s": round(peers_small, 2),
            "peers_audio": "ffmpeg subprocess per sample" if use_ffmpeg else "PyAV whole-stream decode per sample",
            "peers_video": "one seek + decode per frame",
            "speedup": round(ours_small / peers_small, 2),
        },
        "random_clips_720p_long_gop": {
            "files": f"{n_large} x 10 s, 25 fps, 1280x720 H.264 (keyframe every 250 frames)",
            "clips": len(large_jobs),
            "original_clips_per_s": round(original, 2),
            "transcoded_clips_per_s": round(after, 2),
            "transcode": "mbt.data.transcode.transcode_file(short_side=256, gop=16)",
            "speedup": round(after / original, 2),
        },
    }
    text = strict_dumps(result, indent=1)
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        machine = socket.gethostname() or platform.machine()
        (args.out / f"media-{machine}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
