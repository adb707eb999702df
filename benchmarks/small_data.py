"""Small data from scratch: the tiny preset trained on ~600 real-signal clips, through `mbt train`'s code path.

Builds the set of `small_data_set.py` (handwritten digits drifting over noise, their spoken names by espeak-ng
over noise, one modality degraded in 60 % of the clips; deterministic), trains a recipe (default: the packaged
`small-data` recipe) with `mbt.recipes.train.train` - what `mbt train` runs - and evaluates the test split as
`mbt evaluate` does (4 clips per video) with both streams (A+V), the audio stream alone (A) and the video alone
(V). Writes the JSON (A / V / A+V, the learning curve, the targets of issue 16 and whether they hold) to
`benchmarks/results/small_data-<variant>-<machine>.json` and the curves to a PNG beside it.

    PYTHONPATH=src python benchmarks/small_data.py [--variant classes|relation] [--recipe small-data]
        [--set key=value ...] [--epochs 30] [--out small_data_out] [--tag NAME]

`--variant relation`: the label is whether the shown and the spoken digit agree (each stream alone at chance);
`--set model.fusion_layer=6` (late), `--set model.fusion=vanilla` compare the fusions on it.
Needs espeak-ng (Debian: apt-get install espeak-ng) to build the set.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small_data_set import SetSpec, build_set  # noqa: E402
from train_step import machine_info  # noqa: E402

from mbt.config import load_config  # noqa: E402
from mbt.engine.evaluate import evaluate_checkpoint  # noqa: E402
from mbt.fileio import dumps as strict_dumps  # noqa: E402
from mbt.fileio import write_json  # noqa: E402
from mbt.recipes.train import train  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

RESULTS = Path(__file__).resolve().parent / "results"
STREAMS = {"A+V": ("video", "audio"), "A": ("audio",), "V": ("video",)}


def read_curve(run_dir: Path) -> list[dict]:
    """Per epoch: the mean training loss and the validation top-1 (from the run's metrics.jsonl)."""
    losses: dict[int, list[float]] = {}
    val: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses.setdefault(record["epoch"], []).append(record["loss"])
        if "val_top1" in record:
            val[record["epoch"]] = record["val_top1"]
    return [{"epoch": e, "train_loss": round(sum(v) / len(v), 4), "val_top1": val.get(e)}
            for e, v in sorted(losses.items())]


def plot(curve: list[dict], result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [c["epoch"] for c in curve]
    chance = math.log(result["classes"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [c["train_loss"] for c in curve], marker="o", ms=3, label="training loss")
    left.axhline(chance, color="grey", ls=":", label=f"chance (ln {result['classes']})")
    left.axhline(0.9 * chance, color="grey", ls="--", label="90% of chance")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.legend(fontsize=8)
    val = [(c["epoch"], c["val_top1"]) for c in curve if c["val_top1"] is not None]
    right.plot([e for e, _ in val], [v for _, v in val], marker="o", ms=3, label="validation top-1 (A+V, 1 clip)")
    for name, colour in (("A+V", "C0"), ("A", "C1"), ("V", "C2")):
        right.axhline(result["test_top1"][name], color=colour, ls="--", lw=1,
                      label=f"test {name} (4 clips): {result['test_top1'][name]:.3f}")
    if result["variant"] == "classes":
        right.axhline(0.70, color="grey", ls=":", lw=1, label="target A+V 0.70")
    right.set_ylim(0, 1)
    right.set_xlabel("epoch")
    right.set_ylabel("top-1")
    right.legend(fontsize=8, loc="upper left")
    changed = f" + {' '.join(result['overrides'])}" if result["overrides"] else ""
    fig.suptitle(f"mbt-tiny from scratch, {result['train_clips']} clips ({result['variant']}): "
                 f"{result['recipe']}{changed}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("classes", "relation"), default="classes")
    parser.add_argument("--recipe", default="small-data", help="packaged recipe or YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="seed of the set (the run's: --set train.seed=N)")
    parser.add_argument("--out", type=Path, default=Path("small_data_out"))
    parser.add_argument("--tag", default=None, help="name of this run in the results (default: the variant)")
    parser.add_argument("--jobs", type=int, default=2, help="processes building the set")
    args = parser.parse_args()

    spec = SetSpec(seed=args.seed, variant=args.variant)
    built = build_set(args.out / f"set-{args.variant}-seed{args.seed}", spec, jobs=args.jobs)
    tag = args.tag or args.variant
    overrides = [f"data.train={built.train}", f"data.val={built.test}", f"data.classes={built.classes}",
                 f"train.epochs={args.epochs}", *args.set]
    cfg = load_config(args.recipe, overrides)
    run_dir = args.out / "runs" / tag
    started, cpu_started = time.time(), time.process_time()
    train(cfg, run_dir, overwrite=True, progress=False)
    train_seconds = time.time() - started
    test = {name: evaluate_checkpoint(run_dir, built.test, num_clips=4, modalities=streams, progress=False)
            for name, streams in STREAMS.items()}
    top1 = {name: round(float(r.metrics["top1"]), 4) for name, r in test.items()}
    curve = read_curve(run_dir)
    classes = len(built.class_names)
    chance = math.log(classes)
    best_single = max(top1["A"], top1["V"])
    loss_at_5 = curve[4]["train_loss"] if len(curve) >= 5 else None
    result = {
        "benchmark": "small_data", "variant": args.variant, "tag": tag, "recipe": args.recipe,
        "overrides": args.set, "set_seed": args.seed, "train_clips": spec.num_train, "test_clips": spec.num_test,
        "classes": classes, "epochs": args.epochs, "test_top1": top1, "curve": curve,
        "resolved": {"frame_stride": cfg.data.frame_stride, "spec_frames": cfg.model.spec_frames,
                     "spec_mean": cfg.data.spec_mean, "spec_std": cfg.data.spec_std},
        "train_wall_s": round(train_seconds), "cpu_s": round(time.process_time() - cpu_started),
        "machine": machine_info("cpu"),
    }
    if args.variant == "classes":
        result["targets"] = {
            "av_at_least_0.70": top1["A+V"] >= 0.70,
            "av_over_best_single_stream_by_0.08": top1["A+V"] >= best_single + 0.08,
            "loss_below_90pct_of_chance_by_epoch_5": loss_at_5 is not None and loss_at_5 < 0.9 * chance,
        }
    RESULTS.mkdir(exist_ok=True)
    stem = f"small_data-{tag}-{socket.gethostname()}"
    write_json(RESULTS / f"{stem}.json", result, what="benchmark result")
    plot(curve, result, RESULTS / f"{stem}.png")
    print(strict_dumps({k: result[k] for k in ("tag", "test_top1", "targets") if k in result}, indent=1))
    print(f"saved {RESULTS / stem}.json and .png")


if __name__ == "__main__":
    main()
