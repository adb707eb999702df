"""`mbt demo`: the paper's point on a fresh machine in minutes.

Builds the embedded demo sets as real mp4 files, trains late, vanilla-mid and bottleneck-mid fusion with the demo
recipe (the tiny preset, smaller), evaluates each with audio only, video only and both, and prints one table with
accuracy, GFLOPs and training throughput; plots go to the output folder.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mbt.analysis.flops import count_flops
from mbt.analysis.plots import plot_accuracy_vs_gflops, plot_training_curves
from mbt.config import load_config
from mbt.data.cache import InMemoryClips
from mbt.data.datasets import ClipDataset
from mbt.data.demo import build_demo_set
from mbt.data.manifest import read_manifest
from mbt.engine.evaluate import evaluate_dataset, load_for_inference
from mbt.fileio import write_json
from mbt.recipes.train import train

log = logging.getLogger("mbt.demo")

MODALITY_SETS = {"A": ("audio",), "V": ("video",), "A+V": ("video", "audio")}


@dataclass
class DemoRow:
    variant: str
    fusion: str
    A: float
    V: float
    AV: float
    gflops: float
    train_clips_per_s: float
    seconds: float


def fusion_runs(depth: int, mid: int) -> dict[str, list[str]]:
    """The three fusion settings the demo compares, as config overrides."""
    return {
        "late": ["model.fusion=bottleneck", f"model.fusion_layer={depth}"],
        "vanilla-mid": ["model.fusion=vanilla", f"model.fusion_layer={mid}"],
        "bottleneck-mid": ["model.fusion=bottleneck", f"model.fusion_layer={mid}"],
    }


def _sizes(quick: bool) -> dict[str, int]:
    return dict(num_train=240, num_val=48, num_test=96) if quick else dict(num_train=480, num_val=96, num_test=192)


def run_demo(out_dir: str | Path = "demo_out", *, quick: bool = False, progress: bool = True,
             variants: tuple[str, ...] = ("fusion", "match")) -> list[DemoRow]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_config("demo")
    runs = fusion_runs(base.model.depth, base.model.fusion_layer)
    epochs = {"fusion": 8 if quick else 20, "match": 15 if quick else 30}
    rows: list[DemoRow] = []
    for variant in variants:
        started = time.time()
        demo = build_demo_set(out_dir / "data", variant=variant, progress=progress, **_sizes(quick))
        log.info("demo set %s ready in %.1f s: %s", variant, time.time() - started, demo.root)
        test_rows = read_manifest(demo.test)
        run_dirs: dict[str, Path] = {}
        for name, overrides in runs.items():
            cfg = load_config("demo", [*overrides, f"data.train={demo.train}", f"data.val={demo.val}",
                                       f"data.classes={demo.classes}", f"train.epochs={epochs[variant]}"])
            run_dir = out_dir / "runs" / variant / name
            print(f"[{variant}] training {name} fusion ({cfg.train.epochs} epochs)...", flush=True)
            started = time.time()
            shutil.rmtree(run_dir, ignore_errors=True)  # the demo's runs are its own products: retrained each time
            result = train(cfg, run_dir, progress=progress)
            model, preprocessor = load_for_inference(run_dir)
            test = InMemoryClips(ClipDataset(test_rows, demo.class_names, preprocessor, train=False,
                                             modalities=model.config.modalities), progress=progress)
            accuracy = {key: evaluate_dataset(model, test, batch_size=64, modalities=mods,
                                              progress=False).metrics["top1"]
                        for key, mods in MODALITY_SETS.items()}
            rows.append(DemoRow(variant, name, accuracy["A"], accuracy["V"], accuracy["A+V"],
                                count_flops(model.config).gflops, result.clips_per_second, time.time() - started))
            run_dirs[name] = run_dir
        plot_training_curves(run_dirs, out_dir / f"curves_{variant}.png", f"demo set '{variant}'")
        points = [{"label": r.fusion, "gflops": r.gflops, "A+V": r.AV} for r in rows if r.variant == variant]
        plot_accuracy_vs_gflops(points, out_dir / f"accuracy_vs_gflops_{variant}.png",
                                f"demo set '{variant}': A+V accuracy vs compute")
    write_json(out_dir / "results.json", [asdict(r) for r in rows], what="demo results")
    return rows


def format_table(rows: list[DemoRow]) -> str:
    lines = [f"{'set':9s} {'fusion':15s} {'A':>6s} {'V':>6s} {'A+V':>6s} {'GFLOPs':>8s} {'clips/s':>8s} {'time':>6s}"]
    for r in rows:
        lines.append(f"{r.variant:9s} {r.fusion:15s} {r.A:6.1%} {r.V:6.1%} {r.AV:6.1%} {r.gflops:8.3f} "
                     f"{r.train_clips_per_s:8.1f} {r.seconds:5.0f}s")
    return "\n".join(lines)
