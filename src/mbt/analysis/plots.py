"""PNG plots of runs: training curves and accuracy against compute."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_training_curves(runs: dict[str, Path], out: Path, title: str) -> Path:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run_dir in runs.items():
        records = read_metrics(run_dir)
        steps = [r for r in records if "loss" in r]
        loss_ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label=name, alpha=0.8)
        evals = [r for r in records if "val_top1" in r]
        if evals:
            acc_ax.plot([r["epoch"] for r in evals], [r["val_top1"] for r in evals], marker="o", label=name)
    loss_ax.set(xlabel="step", ylabel="training loss", title=f"{title}: training loss")
    acc_ax.set(xlabel="epoch", ylabel="validation top-1", title=f"{title}: validation accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_accuracy_vs_gflops(points: list[dict], out: Path, title: str, metric: str = "A+V") -> Path:
    """points: [{"label", "gflops", metric}]."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for p in points:
        ax.scatter(p["gflops"], p[metric], s=60)
        ax.annotate(p["label"], (p["gflops"], p[metric]), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set(xlabel="GFLOPs per clip (multiply-adds)", ylabel=f"test accuracy ({metric})", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def as_number(value) -> float | None:
    """A CSV cell as a finite float, or None (text, empty, nan)."""
    import math

    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def plot_sweep(rows: list[dict], x_key: str, line_keys: list[str], metric: str, out: Path, title: str,
               count_key: str | None = None) -> Path:
    """Sweep results (rows of results.csv): `metric` (left) and GFLOPs (right) against `x_key`, one line per
    combination of the `line_keys` values. Numeric x values get a numeric axis, others one position each.
    `count_key` (the number of evaluated clips) adds binomial standard errors to an accuracy metric: the test-set
    noise that differences between points must exceed to mean anything."""
    import math

    xs = list(dict.fromkeys(str(r[x_key]) for r in rows))
    numeric = all(as_number(x) is not None for x in xs)
    position = {x: (as_number(x) if numeric else i) for i, x in enumerate(xs)}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(str(r[k]) for k in line_keys), []).append(r)
    fig, (metric_ax, flops_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for group, members in groups.items():
        members = sorted(members, key=lambda r: position[str(r[x_key])])
        label = ", ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in zip(line_keys, group)) or None
        x = [position[str(r[x_key])] for r in members]
        y = [float(r[metric]) for r in members]
        errors = None
        if count_key is not None:
            errors = [math.sqrt(p * (1 - p) / max(float(r[count_key]), 1)) for p, r in zip(y, members)]
        metric_ax.errorbar(x, y, yerr=errors, marker="o", capsize=3, label=label)
        flops_ax.plot(x, [float(r["gflops"]) for r in members], marker="o", label=label)
    short = x_key.split(".", 1)[-1]
    metric_ax.set(xlabel=short, ylabel=metric + (" (± 1 binomial s.e.)" if count_key else ""),
                  title=f"{metric} vs {short}")
    flops_ax.set(xlabel=short, ylabel="GFLOPs per clip (multiply-adds)", title=f"compute vs {short}")
    for ax in (metric_ax, flops_ax):
        if numeric:
            ax.set_xticks(sorted(position.values()))
        else:
            ax.set_xticks(range(len(xs)), xs)
        ax.grid(alpha=0.3)
        if line_keys:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
