"""Training step time and peak memory of bottleneck fusion (Lf=8, B=4) against late fusion and vanilla fusion (Lf=8),
mbt-base at the paper's inputs (32 x 224^2 video, 800 x 128 spectrogram), AudioSet head (527 classes, sigmoid BCE).

One worker process per configuration builds its model and optimiser once; the parent then asks the workers for one
step each in turn, round after round (A, B, C, then B, C, A, ...: the order rotates), after a warm-up round, so a
busy phase of the machine (other jobs on the same cores) slows every configuration of a round alike. A step is
forward + loss + backward + SGD (momentum 0.9) update, timed on the wall clock (on CUDA after synchronising) and, on
CPU, also by the worker's CPU time (getrusage user + system), which other jobs on the same cores disturb far less
than the wall clock. On CPU each worker runs one torch thread (`--threads`): the work of a step is then the same
whatever else runs on the machine. Every round gives a ratio (a configuration's step over late fusion's step in the
same round); the JSON lists them all, with their median (the headline, e.g. `bottleneck_over_late_cpu_time`), their
extremes, and the load average at every round, so that one lucky round cannot carry a claim.

Peak memory, CPU: the worker's resident-set high-water mark (`resource.getrusage(RUSAGE_SELF).ru_maxrss`). The
worker holds one configuration only, so this is that configuration's peak, including the interpreter and torch
(~0.3 GB). CUDA: `torch.cuda.max_memory_allocated` (tensors only, not the caching allocator's reserve).

CUDA (`--device cuda`; not run on the CPU-only machine these results came from): bf16 autocast, attention forced
to SDPA's flash kernel, and MFU against `--peak-tflops` (the card's dense bf16 peak, e.g. 989 for an H100 SXM),
counting a training step as 3x the forward multiply-adds (forward + backward), 2 FLOPs each.

    PYTHONPATH=src python benchmarks/train_step.py [--repeats 6] [--threads 1] [--device cpu|cuda] [--batch-size 1]
        [--configs bottleneck late vanilla] [--peak-tflops T]

Prints JSON and saves it to benchmarks/results/train_step-<device>-<machine>.json.
"""

from __future__ import annotations

import argparse
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
from mbt.fileio import dumps as strict_dumps

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
    text = strict_dumps(output, indent=1)
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


def _usage() -> tuple[float, int]:
    """CPU seconds (user + system, all threads) and minor page faults of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def _worker(name: str, device: str, batch_size: int, threads: int, connection) -> None:
    # One thread by default: the work per step is then fixed, whatever else runs on the cores. With several threads
    # on a shared machine, OpenMP threads spin while a sibling is descheduled, which counts as CPU time.
    if threads:
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
    from mbt.data.datasets import loader_worker_init
    from mbt.engine.losses import mbt_loss
    from mbt.model import MBT

    # glibc returns freed memory to the system and moves its mmap threshold as it goes, so the same step page-faults
    # 45k to 580k times from one round to the next (measured): most of the round-to-round noise. Fixed thresholds
    # (what the loader workers use) make every step of a configuration fault alike.
    loader_worker_init(0)
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
            started, (cpu_started, faults_started) = time.perf_counter(), _usage()
            with run_context(device):
                loss = mbt_loss(model(**inputs), targets, cfg)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronise(device)
            cpu_ended, faults_ended = _usage()
            connection.send((time.perf_counter() - started, cpu_ended - cpu_started, faults_ended - faults_started))
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


def spread(values: list[float]) -> dict:
    """Median, extremes and relative range of a list of per-round figures."""
    median = statistics.median(values)
    return {"median": round(median, 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "range_over_median": round((max(values) - min(values)) / median, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=6, help="timed rounds (one step per configuration each), "
                        "after a warm-up round")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker (CPU; 0 = torch's default). 1 keeps each step's work fixed "
                             "on a machine shared with other jobs")
    parser.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=list(CONFIGS),
                        help="configurations to time (late is always included: the ratios are against it)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak (dense bf16) for MFU")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    names = [name for name in CONFIGS if name in args.configs or name == "late"]

    load_before = os.getloadavg()
    context = mp.get_context("spawn")  # a fresh process per configuration: its own memory high-water mark
    workers = {}
    for name in names:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(name, args.device, args.batch_size, args.threads, child),
                                  daemon=True)
        process.start()
        workers[name] = (process, parent)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[int]] = {name: [] for name in names}
    warmup: dict[str, float] = {}
    load_per_round = []
    started = time.time()
    try:
        for round_index in range(args.repeats + 1):  # round 0 is the warm-up
            load_per_round.append(round(os.getloadavg()[0], 2))
            # The order rotates every round, so no configuration always follows the same one (caches, memory).
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                connection = workers[name][1]
                connection.send("step")
                seconds, cpu_seconds, step_faults = connection.recv()
                if round_index == 0:
                    warmup[name] = seconds
                else:
                    times[name].append(seconds)
                    cpu_times[name].append(cpu_seconds)
                    faults[name].append(step_faults)
                print(f"round {round_index}{' (warm-up)' if round_index == 0 else ''} {name}: {seconds:.2f} s "
                      f"(CPU {cpu_seconds:.2f} s, load {os.getloadavg()[0]:.1f})", flush=True)
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
    for name in names:
        overrides = CONFIGS[name]
        report = count_flops(model_config("mbt-base", overrides), batch_size=args.batch_size)
        median = statistics.median(times[name])
        train_flops = 3 * 2 * report.gflops * 1e9  # forward + backward = 3 x forward MACs, 2 FLOPs each
        results[name] = {**overrides, "params": report.params, "forward_gmacs": round(report.gflops, 2),
                         "warmup_step_seconds": round(warmup[name], 3),
                         "step_seconds": [round(t, 3) for t in times[name]], "median_step_seconds": round(median, 3),
                         "step_cpu_seconds": [round(t, 3) for t in cpu_times[name]],
                         "median_step_cpu_seconds": round(statistics.median(cpu_times[name]), 3),
                         "step_minor_page_faults": faults[name],
                         "achieved_tflops": round(train_flops / median / 1e12, 4), **memory[name]}
        if args.peak_tflops:
            results[name]["mfu"] = round(train_flops / median / 1e12 / args.peak_tflops, 4)

    def per_round(name: str, measure: dict[str, list[float]]) -> list[float]:
        """This configuration's step over late fusion's step of the same round."""
        return [round(a / b, 4) for a, b in zip(measure[name], measure["late"])]

    ratios = {}
    for name in names:
        if name == "late":
            continue
        cpu_rounds, wall_rounds = per_round(name, cpu_times), per_round(name, times)
        ratios.update({
            # the headline: the median over rounds of the same-round ratio of CPU times
            f"{name}_over_late_cpu_time": spread(cpu_rounds)["median"],
            f"{name}_over_late_cpu_time_rounds": cpu_rounds,
            f"{name}_over_late_cpu_time_spread": spread(cpu_rounds),
            f"{name}_over_late_step_time": spread(wall_rounds)["median"],
            f"{name}_over_late_step_time_rounds": wall_rounds,
            f"{name}_over_late_step_time_spread": spread(wall_rounds),
        })
    measure = "cpu_time" if args.device == "cpu" else "step_time"
    goal_rounds = ratios.get(f"bottleneck_over_late_{measure}_rounds")
    output = {
        "benchmark": "train_step",
        "machine": {**machine_info(args.device), "torch_threads": args.threads or torch.get_num_threads()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_per_round": load_per_round,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "setup": {"preset": "mbt-base", "inputs": "video 3 x 32 x 224 x 224, audio 800 x 128", "classes": 527,
                  "batch_size": args.batch_size, "optimizer": "SGD momentum 0.9", "loss": "sigmoid BCE (AudioSet)",
                  "precision": "bf16 autocast" if args.device == "cuda" else "fp32",
                  "attention": "SDPA flash kernel" if args.device == "cuda" else "SDPA (default CPU kernel)",
                  "order": f"interleaved {', '.join(names)}, rotated every round; 1 warm-up + {args.repeats} "
                           "timed rounds",
                  "cpu_time": "worker's getrusage user + system seconds over the step (all its threads)",
                  "ratios": "per round: the configuration's step over late fusion's step of the same round; "
                            "headline = median over rounds",
                  "flops_convention": "step FLOPs = 3 x forward multiply-adds x 2"},
        "configs": results,
        **ratios,
        "goal": f"bottleneck_over_late_{measure} <= 1.03 in every round",
        "goal_met": None if goal_rounds is None else max(goal_rounds) <= 1.03,
        "wall_seconds": round(time.time() - started, 1),
    }
    save_result(output, args.out, "train_step", args.device)


if __name__ == "__main__":
    main()
