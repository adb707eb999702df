"""Sweeps: train and evaluate every point of a grid of config values, one after the other, and plot the metric and
the compute against each swept key (the paper's ablations: fusion layer x vanilla / bottleneck as in its Fig. 3,
and the number of bottleneck tokens).

Resumable: a point whose run directory holds a finished model and whose row in `results.csv` has every metric is
skipped; a finished model without a row is only evaluated; a half-trained point resumes from its last checkpoint.
A run directory trained with another configuration is an error, never silently mixed.
"""

from __future__ import annotations

import csv
import itertools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mbt.config import Config, ConfigError, load_config, split_key

log = logging.getLogger("mbt.sweep")

RESULTS = "results.csv"


@dataclass
class SweepPoint:
    name: str  # the run directory's name, e.g. "fusion_layer=2,fusion=bottleneck"
    overrides: list[str]  # "model.fusion_layer=2", ...
    config: Config


def parse_over(text: str) -> tuple[str, list[str]]:
    """`model.fusion_layer=0,2,4` -> ("model.fusion_layer", ["0", "2", "4"])."""
    key, sep, values = text.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not items:
        raise ConfigError(f"--over {text!r}: expected section.key=value1,value2,...")
    split_key(key)  # the section must exist; the key and values are checked when each point's config is built
    return key.strip(), items


def _value(cfg: Config, key: str) -> Any:
    """The value a point's built config holds for a swept key (typed: 2, not "2")."""
    if key == "model.preset":  # the preset lives beside the model fields
        return cfg.preset
    section, name = key.split(".", 1)
    value = getattr(getattr(cfg, section), name)
    return list(value) if isinstance(value, tuple) else value


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text)


def sweep_points(config: str | Path, overs: list[tuple[str, list[str]]], overrides: list[str] | None = None
                 ) -> list[SweepPoint]:
    """The cartesian product of the swept values, in order (the last key varies fastest), each point's config
    built and validated up front, so that a bad key or value fails before anything trains."""
    keys = [key for key, _ in overs]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--over: a key is swept twice ({', '.join(keys)})")
    points = []
    for values in itertools.product(*[vals for _, vals in overs]):
        point_overrides = [f"{key}={value}" for key, value in zip(keys, values)]
        cfg = load_config(config, [*(overrides or []), *point_overrides])
        name = ",".join(_slug(f"{key.split('.', 1)[1]}={value}") for key, value in zip(keys, values))
        points.append(SweepPoint(name, point_overrides, cfg))
    return points


def metric_columns(metrics: list[str], modality_sets: list[tuple[str, ...]]) -> list[str]:
    """`top1` for the first modality set (the default: all streams), `top1[audio]` for the others."""
    return [metric if i == 0 else f"{metric}[{'+'.join(mods)}]"
            for i, mods in enumerate(modality_sets) for metric in metrics]


def read_results(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """Whole-file rewrite through a temporary file: an interrupted write never leaves a truncated CSV."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _check_run_dir(run_dir: Path, cfg: Config) -> None:
    from mbt.engine.train import RUN_CONFIG

    saved = run_dir / RUN_CONFIG
    if not saved.is_file():
        return
    previous = yaml.safe_load(saved.read_text())
    current = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))  # the same YAML round trip as the saved file
    changed = sorted(f"{section}.{key}" for section, values in current.items()
                     for key in set(values) | set(previous.get(section, {}))
                     if values.get(key) != previous.get(section, {}).get(key))
    if changed:
        raise ConfigError(f"{run_dir}: trained with a different configuration ({', '.join(changed[:4])} differ); "
                          "remove the directory or sweep into another --out")


def _evaluate(run_dir: Path, cfg: Config, manifest: str, modality_sets: list[tuple[str, ...]],
              progress: bool) -> dict[str, Any]:
    from mbt.data.cache import InMemoryClips
    from mbt.data.datasets import ClipDataset
    from mbt.data.manifest import read_manifest
    from mbt.engine.evaluate import evaluate_dataset, load_for_inference

    model, preprocessor = load_for_inference(run_dir)
    rows = read_manifest(manifest)
    results: dict[str, Any] = {}
    for i, mods in enumerate(modality_sets):
        dataset = ClipDataset(rows, preprocessor.cfg.class_names, preprocessor, train=False, modalities=mods,
                              multi_label=model.config.multi_label, class_splits=model.config.class_splits,
                              num_clips=cfg.data.eval_clips, num_crops=cfg.data.eval_crops,
                              on_missing_modality="skip")
        workers = cfg.train.num_workers
        if cfg.data.cache:  # small sets: decoded once for every point of the sweep with the same preprocessing
            dataset, workers = InMemoryClips(dataset, num_workers=workers, progress=progress), 0
        result = evaluate_dataset(model, dataset, batch_size=cfg.train.batch_size, num_workers=workers,
                                  modalities=mods, progress=progress)
        suffix = "" if i == 0 else f"[{'+'.join(mods)}]"
        results |= {f"{k}{suffix}": v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    return results


def run_sweep(config: str | Path, overs: list[tuple[str, list[str]]], out_dir: str | Path, *,
              overrides: list[str] | None = None, metric: str | None = None,
              modality_sets: list[tuple[str, ...]] | None = None, runs_dir: str | Path | None = None,
              progress: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate every point (see the module docstring); returns the rows of `out_dir/results.csv` and
    writes the plots beside it."""
    from mbt.analysis.flops import count_flops
    from mbt.engine.train import resolve_classes
    from mbt.model.mbt import WEIGHTS_NAME
    from mbt.recipes.train import train

    out_dir = Path(out_dir)
    runs_dir = Path(runs_dir) if runs_dir is not None else out_dir / "runs"
    points = sweep_points(config, overs, overrides)
    first = points[0].config
    manifest = first.data.test or first.data.val
    if not manifest:
        raise ConfigError("data.test / data.val: the sweep evaluates each point on data.test (else data.val); "
                          "set one of them")
    for point in points:  # the classes file sets num_classes (as training does); a missing one fails now
        resolve_classes(point.config)
    metric = metric or ("mAP" if first.model.multi_label else "top1")
    if metric not in ("top1", "mAP"):
        raise ConfigError(f"--metric: must be top1 or mAP, got {metric!r}")
    if (metric == "mAP") != first.model.multi_label:
        raise ConfigError(f"--metric {metric}: model.multi_label is {first.model.multi_label}; single-label sets "
                          "report top1, multi-label sets mAP")
    modality_sets = modality_sets or [tuple(first.model.modalities)]
    for mods in modality_sets:
        unknown = [m for m in mods if m not in first.model.modalities]
        if unknown:
            raise ConfigError(f"--modalities: {unknown[0]!r} is not a modality of the model "
                              f"{first.model.modalities}")
    needed = metric_columns([metric], modality_sets)

    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS
    existing = {row["point"]: row for row in read_results(results_path)}
    keys = [key for key, _ in overs]
    rows: list[dict[str, Any]] = []
    for index, point in enumerate(points):
        run_dir = runs_dir / point.name
        _check_run_dir(run_dir, point.config)  # also for finished points: their rows must match this sweep
        row = existing.get(point.name)
        finished = (run_dir / WEIGHTS_NAME).is_file()
        if finished and row is not None and all(row.get(c) not in (None, "") for c in needed):
            log.info("[%d/%d] %s: done earlier, skipped", index + 1, len(points), point.name)
            rows.append(row)
            continue
        row = {"point": point.name, **{key: _value(point.config, key) for key in keys}}
        if finished:
            log.info("[%d/%d] %s: trained earlier; evaluating", index + 1, len(points), point.name)
            previous = existing.get(point.name, {})
            row |= {k: previous[k] for k in ("train_seconds", "steps", "resumed") if previous.get(k)}
        else:
            resumed = run_dir.is_dir()
            log.info("[%d/%d] %s: %s", index + 1, len(points), point.name, "resuming" if resumed else "training")
            result = train(point.config, run_dir, resume=resumed, progress=progress)
            # a resumed point's time counts this invocation only
            row |= {"train_seconds": round(result.seconds, 1), "steps": result.steps, "resumed": resumed}
        flops = count_flops(point.config.model)
        row |= {"gflops": float(f"{flops.gflops:.6g}"), "params": flops.params}
        row |= _evaluate(run_dir, point.config, manifest, modality_sets, progress)
        row["run_dir"] = str(run_dir)
        rows.append(row)
        log.info("[%d/%d] %s: %s=%.4g, %.4g GFLOPs", index + 1, len(points), point.name, metric, row[metric],
                 row["gflops"])
        # rows of points not reached yet stay in the file
        write_results(results_path, rows + [r for name, r in existing.items()
                                            if name not in {x["point"] for x in rows}])
    write_results(results_path, rows)
    plot_sweep_results(rows, keys, out_dir, metric=needed[0],
                       token_classifier=all(p.config.model.classifier == "token" for p in points))
    return rows


def plot_sweep_results(rows: list[dict[str, Any]], keys: list[str], out_dir: Path, metric: str,
                       token_classifier: bool = True) -> list[Path]:
    """`<metric>_vs_<key>.png` for every swept key with numeric values (the first key when none is numeric): the
    metric and GFLOPs against that key, one line per combination of the other keys' values."""
    from mbt.analysis.plots import as_number, plot_sweep

    numeric = [k for k in keys if all(as_number(r[k]) is not None for r in rows)]
    paths = []
    for key in numeric or keys[:1]:
        short = key.split(".", 1)[1]
        title = f"{metric} and compute vs {short}"
        if short == "num_bottlenecks" and token_classifier:
            title += " (+1 CLS slot each, as the official code)"
        counts = metric.replace("top1", "num_videos", 1) if metric.startswith("top1") else None
        paths.append(plot_sweep(rows, key, [k for k in keys if k != key], metric,
                                out_dir / f"{_slug(metric)}_vs_{short}.png", title, count_key=counts))
    return paths
