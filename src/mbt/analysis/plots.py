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
