"""Training step time and peak memory of bottleneck fusion (Lf=8, B=4) against late fusion and vanilla fusion (Lf=8),
mbt-base at the paper's inputs (32 x 224^2 video, 800 x 128 spectrogram), AudioSet head (527 classes, sigmoid BCE).

One worker process per configuration builds its model and optimiser once; the parent then asks the workers for one
step each in turn (A, B, C, A, B, C, ...) after a warm-up step each, so a busy phase of the machine (other jobs on
the same cores) slows every configuration alike and the ratios stay fair. A step is forward + loss + backward +
SGD (momentum 0.9) update, timed on the wall clock (on CUDA after synchronising) and, on CPU, also by the worker's
CPU time (all its threads), which other jobs on the same cores disturb far less than the wall clock.

Peak memory, CPU: the worker's resident-set high-water mark (`resource.getrusage(RUSAGE_SELF).ru_maxrss`). The
worker holds one configuration only, so this is that configuration's peak, including the interpreter and torch
(~0.3 GB). CUDA: `torch.cuda.max_memory_allocated` (tensors only, not the caching allocator's reserve).

CUDA (`--device cuda`; not run on the CPU-only machine these results came from): bf16 autocast, attention forced
to SDPA's flash kernel, and MFU against `--peak-tflops` (the card's dense bf16 peak, e.g. 989 for an H100 SXM),
counting a training step as 3x the forward multiply-adds (forward + backward), 2 FLOPs each.

    PYTHONPATH=src python benchmarks/train_step.py [--repeats 3] [--device cpu|cuda] [--batch-size 1]
        [--peak-tflops T]

Prints JSON and saves it to benchmarks/results/train_step-<device>-<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import socket
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from mbt.analysis.flops import count_flops
from mbt.config import MBTConfig

CONFIGS = {  # name -> MBTConfig overrides on the mbt-base preset
    "bottleneck": dict(fusion="bottleneck", fusion_layer=8, num_bottlenecks=4),
    "late": dict(fusion="bottleneck", fusion_layer=12),  # fusion_layer = depth: two streams, no exchange
    "vanilla": dict(fusion="vanilla", fusion_layer=8),
}


def model_config(preset: str, overrides: dict) -> MBTConfig:
    return MBTConfig.preset(preset, num_classes=527, multi_label=True, **overrides)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    info = {"host": socket.gethostname(), "platform": platform.platform(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def save_result(output: dict, out_dir: Path, name: str, device: str) -> Path:
    """Print the JSON and save it as <out_dir>/<name>-<device>-<machine>.json."""
    text = json.dumps(output, indent=1)
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{device}-{socket.gethostname() or platform.machine()}.json"
    path.write_text(text + "\n")
    return path


def run_context(device: str):
    """bf16 autocast + flash attention on CUDA; plain fp32 (SDPA's default CPU kernel) on CPU."""
    if device != "cuda":
        return nullcontext()
    from contextlib import ExitStack

    from torch.nn.attention import SDPBackend, sdpa_kernel

    stack = ExitStack()
    stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
    stack.enter_context(sdpa_kernel(SDPBackend.FLASH_ATTENTION))
    return stack


def synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _worker(name: str, device: str, batch_size: int, connection) -> None:
    from mbt.engine.losses import mbt_loss
    from mbt.model import MBT

    torch.manual_seed(0)
    cfg = model_config("mbt-base", CONFIGS[name])
    model = MBT(cfg).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)  # the official optimiser
    inputs = {m: torch.randn(batch_size, *cfg.input_shape(m), device=device) for m in cfg.modalities}
    targets = (torch.rand(batch_size, cfg.num_classes, device=device) < 0.01).float()
    while True:
        command = connection.recv()
        if command == "step":
            synchronise(device)
            started, cpu_started = time.perf_counter(), time.process_time()
            with run_context(device):
                loss = mbt_loss(model(**inputs), targets, cfg)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronise(device)
            connection.send((time.perf_counter() - started, time.process_time() - cpu_started))
        elif command == "memory":
            if device == "cuda":
                connection.send({"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                                 "memory_measure": "torch.cuda.max_memory_allocated"})
            else:
                connection.send({"peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                                 "memory_measure": "process ru_maxrss (resident-set high-water mark)"})
        else:
            connection.close()
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration (after a warm-up)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak (dense bf16) for MFU")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")

    load_before = os.getloadavg()
    context = mp.get_context("spawn")  # a fresh process per configuration: its own memory high-water mark
    workers = {}
    for name in CONFIGS:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(name, args.device, args.batch_size, child), daemon=True)
        process.start()
        workers[name] = (process, parent)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    cpu_times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    warmup: dict[str, float] = {}
    started = time.time()
    try:
        for round_index in range(args.repeats + 1):  # round 0 is the warm-up
            for name, (_, connection) in workers.items():
                connection.send("step")
                seconds, cpu_seconds = connection.recv()
                if round_index == 0:
                    warmup[name] = seconds
                else:
                    times[name].append(seconds)
                    cpu_times[name].append(cpu_seconds)
                print(f"round {round_index}{' (warm-up)' if round_index == 0 else ''} {name}: {seconds:.2f} s "
                      f"(CPU {cpu_seconds:.2f} s)", flush=True)
        memory = {}
        for name, (_, connection) in workers.items():
            connection.send("memory")
            memory[name] = connection.recv()
    finally:
        for process, connection in workers.values():
            try:
                connection.send("stop")
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=30)

    results = {}
    for name, overrides in CONFIGS.items():
        report = count_flops(model_config("mbt-base", overrides), batch_size=args.batch_size)
        median = statistics.median(times[name])
        train_flops = 3 * 2 * report.gflops * 1e9  # forward + backward = 3 x forward MACs, 2 FLOPs each
        results[name] = {**overrides, "params": report.params, "forward_gmacs": round(report.gflops, 2),
                         "warmup_step_seconds": round(warmup[name], 3),
                         "step_seconds": [round(t, 3) for t in times[name]], "median_step_seconds": round(median, 3),
                         "step_cpu_seconds": [round(t, 3) for t in cpu_times[name]],
                         "median_step_cpu_seconds": round(statistics.median(cpu_times[name]), 3),
                         "achieved_tflops": round(train_flops / median / 1e12, 4), **memory[name]}
        if args.peak_tflops:
            results[name]["mfu"] = round(train_flops / median / 1e12 / args.peak_tflops, 4)
    paired = [b / late for b, late in zip(times["bottleneck"], times["late"])]
    ratio = results["bottleneck"]["median_step_seconds"] / results["late"]["median_step_seconds"]
    output = {
        "benchmark": "train_step",
        "machine": machine_info(args.device),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "setup": {"preset": "mbt-base", "inputs": "video 3 x 32 x 224 x 224, audio 800 x 128", "classes": 527,
                  "batch_size": args.batch_size, "optimizer": "SGD momentum 0.9", "loss": "sigmoid BCE (AudioSet)",
                  "precision": "bf16 autocast" if args.device == "cuda" else "fp32",
                  "attention": "SDPA flash kernel" if args.device == "cuda" else "SDPA (default CPU kernel)",
                  "order": f"interleaved {', '.join(CONFIGS)}; 1 warm-up + {args.repeats} timed steps each",
                  "flops_convention": "step FLOPs = 3 x forward multiply-adds x 2"},
        "configs": results,
        "bottleneck_over_late_step_time": round(ratio, 4),
        "bottleneck_over_late_step_time_paired_median": round(statistics.median(paired), 4),
        "vanilla_over_late_step_time": round(results["vanilla"]["median_step_seconds"]
                                             / results["late"]["median_step_seconds"], 4),
        # CPU time of the worker (all its threads) is far less sensitive to other jobs than wall time
        "bottleneck_over_late_cpu_time": round(results["bottleneck"]["median_step_cpu_seconds"]
                                               / results["late"]["median_step_cpu_seconds"], 4),
        "vanilla_over_late_cpu_time": round(results["vanilla"]["median_step_cpu_seconds"]
                                            / results["late"]["median_step_cpu_seconds"], 4),
        "goal": "bottleneck_over_late_step_time <= 1.03",
        "goal_met": ratio <= 1.03,
        "wall_seconds": round(time.time() - started, 1),
    }
    text = json.dumps(output, indent=1)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"train_step-{args.device}-{socket.gethostname() or platform.machine()}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
