"""Modality dropout on the demo's `fusion` set: A / V / A+V test accuracy of bottleneck mid fusion (the demo recipe)
trained without and with `train.modality_dropout`, over a few seeds.

The `fusion` set's Bayes-optimal accuracies are A 23.75 %, V 46.25 %, A+V 87.5 % (see mbt.data.demo.tasks). "A" is
the model run on the audio stream alone (the video stream masked out), "V" on the video alone.

    PYTHONPATH=src python benchmarks/modality_dropout.py [--quick] [--seeds 0 1 2] [--dropout 0.25]
        [--epochs N] [--out demo_out/modality_dropout]

`--quick` uses the `mbt demo --quick` sizes (240 training, 48 validation, 96 test clips, 8 epochs). Prints JSON and
saves it to benchmarks/results/modality_dropout-cpu-<machine>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import machine_info, save_result  # noqa: E402

from mbt.config import load_config  # noqa: E402
from mbt.data.cache import InMemoryClips  # noqa: E402
from mbt.data.datasets import ClipDataset  # noqa: E402
from mbt.data.demo import build_demo_set  # noqa: E402
from mbt.data.manifest import read_manifest  # noqa: E402
from mbt.engine.evaluate import evaluate_dataset, load_for_inference  # noqa: E402
from mbt.recipes.demo import MODALITY_SETS, _sizes, fusion_runs  # noqa: E402
from mbt.recipes.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="mbt demo --quick sizes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dropout", type=float, default=0.25, help="fraction of samples losing each stream")
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's (8 quick, 20 full)")
    parser.add_argument("--out", type=Path, default=Path("demo_out/modality_dropout"))
    args = parser.parse_args()

    sizes = _sizes(args.quick)
    epochs = args.epochs or (8 if args.quick else 20)
    demo = build_demo_set(args.out / "data", variant="fusion", progress=False, **sizes)
    base = load_config("demo")
    bottleneck_mid = fusion_runs(base.model.depth, base.model.fusion_layer)["bottleneck-mid"]
    settings = {"none": [], "dropout": [f"train.modality_dropout={{audio: {args.dropout}, video: {args.dropout}}}"]}
    test_rows = read_manifest(demo.test)
    runs = []
    for seed in args.seeds:
        for name, extra in settings.items():
            cfg = load_config("demo", [*bottleneck_mid, *extra, f"data.train={demo.train}", f"data.val={demo.val}",
                                       f"data.classes={demo.classes}", f"train.epochs={epochs}",
                                       f"train.seed={seed}"])
            run_dir = args.out / "runs" / f"{name}-seed{seed}"
            started = time.time()
            print(f"training bottleneck-mid, modality dropout {name}, seed {seed} ({epochs} epochs)...",
                  file=sys.stderr, flush=True)
            train(cfg, run_dir, progress=False)
            model, preprocessor = load_for_inference(run_dir)
            test = InMemoryClips(ClipDataset(test_rows, demo.class_names, preprocessor, train=False,
                                             modalities=model.config.modalities), progress=False)
            accuracy = {key: evaluate_dataset(model, test, batch_size=64, modalities=mods,
                                              progress=False).metrics["top1"]
                        for key, mods in MODALITY_SETS.items()}
            runs.append({"setting": name, "seed": seed, **accuracy, "seconds": round(time.time() - started, 1)})
            print(runs[-1], file=sys.stderr, flush=True)
    summary = {}
    for name in settings:
        mine = [r for r in runs if r["setting"] == name]
        summary[name] = {key: {"mean": statistics.mean(r[key] for r in mine),
                               "min": min(r[key] for r in mine), "max": max(r[key] for r in mine)}
                         for key in MODALITY_SETS}
    output = {
        "what": "test top-1 of bottleneck mid fusion (demo recipe) on the demo fusion set, by streams used",
        "sizes": {**sizes, "epochs": epochs}, "modality_dropout": {"audio": args.dropout, "video": args.dropout},
        "bayes_optimal": {"A": 0.2375, "V": 0.4625, "A+V": 0.875},
        "runs": runs, "summary": summary,
        "machine": machine_info("cpu"), "torch_threads": torch.get_num_threads(),
    }
    save_result(output, Path(__file__).resolve().parent / "results", "modality_dropout", "cpu")


if __name__ == "__main__":
    main()
