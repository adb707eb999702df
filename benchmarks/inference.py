"""Inference throughput (clips/s) of bottleneck fusion against late fusion: mbt-base at the paper's inputs
(32 x 224^2 video, 800 x 128 spectrogram) and the tiny preset (8 x 112^2, 400 x 128), under torch.inference_mode.

Late fusion is two bare ViT streams side by side (no exchange), so `bottleneck_over_late_throughput` is what the
bottleneck exchange costs at inference. Every case (preset, fusion, batch size) is measured once per round and the
rounds repeat (A, B, C, A, B, C, ...) after a warm-up round, so other jobs on the machine slow all cases alike. A
measurement repeats forward passes until `--min-seconds` have passed (at least one pass).

CPU defaults: mbt-base at batch 1, 2, 4 (late fusion at batch 1 only: a base forward takes ~10 s here) and the tiny
preset at 1, 8, 32 (late fusion at each), fp32. CUDA (`--device cuda`; not run on the CPU-only machine these
results came from): bf16 autocast, SDPA flash attention, late fusion at every batch size, peak memory per case
(`torch.cuda.max_memory_allocated`, which includes the weights of all four models: they stay resident together) and
MFU against `--peak-tflops`.

    PYTHONPATH=src python benchmarks/inference.py [--device cpu|cuda] [--base-batches 1,2,4]
        [--tiny-batches 1,8,32] [--repeats 3] [--peak-tflops T]

Prints JSON and saves it to benchmarks/results/inference-<device>-<machine>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import machine_info, model_config, run_context, save_result, synchronise  # noqa: E402

from mbt.analysis.flops import count_flops  # noqa: E402
from mbt.model import MBT  # noqa: E402

FUSIONS = {"bottleneck": lambda depth: dict(fusion="bottleneck", fusion_layer=depth * 2 // 3, num_bottlenecks=4),
           "late": lambda depth: dict(fusion="bottleneck", fusion_layer=depth)}
DEPTHS = {"mbt-base": 12, "mbt-tiny": 6}  # mid fusion two thirds up: layer 8 of 12, 4 of 6 (the presets' choice)


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated batch sizes") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be >= 1")
    return values


def measure(model: MBT, inputs: dict[str, torch.Tensor], device: str, min_seconds: float) -> tuple[float, int]:
    """(seconds, forward passes) of back-to-back forward passes lasting at least `min_seconds`."""
    passes = 0
    synchronise(device)
    started = time.perf_counter()
    with torch.inference_mode(), run_context(device):
        while True:
            model(**inputs)
            passes += 1
            synchronise(device)
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                return elapsed, passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--base-batches", type=_batches, default=None, help="default: cpu 1,2,4; cuda 1,8,32")
    parser.add_argument("--tiny-batches", type=_batches, default=None, help="default: cpu 1,8,32; cuda 1,32,128")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up round")
    parser.add_argument("--min-seconds", type=float, default=None, help="per measurement (default cpu 0.5, cuda 1)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak (dense bf16) for MFU")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    base_batches = args.base_batches or ([1, 8, 32] if cuda else [1, 2, 4])
    tiny_batches = args.tiny_batches or ([1, 32, 128] if cuda else [1, 8, 32])
    min_seconds = args.min_seconds if args.min_seconds is not None else (1.0 if cuda else 0.5)

    cases = []  # (preset, fusion, batch)
    for preset, batches in (("mbt-base", base_batches), ("mbt-tiny", tiny_batches)):
        for batch in batches:
            cases.append((preset, "bottleneck", batch))
            if cuda or preset == "mbt-tiny" or batch == batches[0]:
                cases.append((preset, "late", batch))
    models, gmacs = {}, {}
    for preset in DEPTHS:
        for fusion, overrides in FUSIONS.items():
            cfg = model_config(preset, overrides(DEPTHS[preset]))
            torch.manual_seed(0)
            models[preset, fusion] = MBT(cfg).to(args.device).eval()
            gmacs[preset, fusion] = count_flops(cfg).gflops

    load_before = os.getloadavg()
    started = time.time()
    samples: dict[tuple, list[float]] = {case: [] for case in cases}
    peak_memory: dict[tuple, float] = {}
    for round_index in range(args.repeats + 1):  # round 0 is the warm-up
        for case in cases:
            preset, fusion, batch = case
            model = models[preset, fusion]
            inputs = {m: torch.randn(batch, *model.config.input_shape(m), device=args.device)
                      for m in model.config.modalities}
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds, passes = measure(model, inputs, args.device, min_seconds)
            if cuda:
                peak_memory[case] = max(peak_memory.get(case, 0.0), torch.cuda.max_memory_allocated() / 2**20)
            if round_index > 0:
                samples[case].append(batch * passes / seconds)
            print(f"round {round_index}{' (warm-up)' if round_index == 0 else ''} {preset} {fusion} batch {batch}: "
                  f"{batch * passes / seconds:.2f} clips/s", flush=True)

    results = []
    for case in cases:
        preset, fusion, batch = case
        clips_per_s = statistics.median(samples[case])
        entry = {"preset": preset, "variant": fusion, "model": FUSIONS[fusion](DEPTHS[preset]), "batch_size": batch,
                 "clips_per_s": round(clips_per_s, 3), "samples_clips_per_s": [round(s, 3) for s in samples[case]],
                 "forward_gmacs_per_clip": round(gmacs[preset, fusion], 3),
                 "achieved_tflops": round(clips_per_s * 2 * gmacs[preset, fusion] * 1e9 / 1e12, 4)}
        if cuda:
            entry["peak_memory_mb"] = round(peak_memory[case], 1)
        if args.peak_tflops:
            entry["mfu"] = round(entry["achieved_tflops"] / args.peak_tflops, 4)
        late = (preset, "late", batch)
        if fusion == "bottleneck" and late in samples:
            entry["bottleneck_over_late_throughput"] = round(clips_per_s / statistics.median(samples[late]), 4)
        results.append(entry)
    output = {
        "benchmark": "inference",
        "machine": machine_info(args.device),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "setup": {"mode": "torch.inference_mode, model.eval()", "classes": 527,
                  "inputs": {"mbt-base": "video 3 x 32 x 224 x 224, audio 800 x 128",
                             "mbt-tiny": "video 3 x 8 x 112 x 112, audio 400 x 128"},
                  "precision": "bf16 autocast" if cuda else "fp32",
                  "attention": "SDPA flash kernel" if cuda else "SDPA (default CPU kernel)",
                  "order": f"interleaved over all cases; 1 warm-up round + {args.repeats} timed rounds; "
                           f"a measurement lasts >= {min_seconds} s",
                  "flops_convention": "FLOPs = 2 x multiply-adds"},
        "results": results,
        "wall_seconds": round(time.time() - started, 1),
    }
    save_result(output, args.out, "inference", args.device)


if __name__ == "__main__":
    main()
