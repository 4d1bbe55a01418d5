"""The PNGs of runner.report.tables: learning curves, isolation of one hyperparameter, gradient norms, activations,
the learning rate applied at each step.

Each `plot_*` draws one figure from loaded runs (runner.report.tables.Run) or seed groups (runner.report.tables.Group) into a
file and returns its name; matplotlib is imported only when drawing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.report.stats import Interval, bounds_of, is_numeric, isolation_axes, per_epoch, short_override, varying_keys
from runner.rundir.outputs import read_jsonl

if TYPE_CHECKING:
    from runner.report.runs import Group, Run

MAX_ACTIVATION_ROWS = 12  # runs drawn in activations.png; more would make each row unreadable
LR_TRACE = "lr_trace.jsonl"  # in a run dir: runner.training.handlers.LearningRateTrace writes it


def draw(runs: list[Run], groups: list[Group], grouped: bool, common: list[str], out: Path) -> list[str]:
    """Write the PNGs that the runs have data for; returns their file names. `grouped` (some config was run
    over several seeds) draws the learning curves per group instead of per run."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, whatever the environment says
    figures = []
    if any(run.metrics for run in runs):
        figures.append(plot_learning_curves(runs, groups if grouped else None, common, out / "learning_curves.png"))
    measured = [g for g in groups if g.interval("best_val_accuracy")]
    if varying_keys([g.config for g in measured]):
        figures.append(plot_isolation(measured, common, out / "isolation.png"))
    diagnosed = [run for run in runs if run.diagnostics]
    if diagnosed:
        figures.append(plot_grad_norms(diagnosed, common, out / "grad_norms.png"))
        figures.append(plot_activations(diagnosed[:MAX_ACTIVATION_ROWS], out / "activations.png"))
    traced = [line for line in map(learning_rate_line, runs) if line[1]]
    if traced:
        figures.append(plot_learning_rate(traced, common, out / "learning_rate.png"))
    return figures


def _values(records: list[dict], key: str) -> list[float]:
    return [math.nan if r.get(key) is None else float(r[key]) for r in records]


def _log_if_decades(ax, values: list[float], axis: str = "y") -> None:
    """Log scale when the positive finite values span more than a factor of 10."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    if positive and max(positive) / min(positive) > 10:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _subtitle(common: list[str]) -> str:
    return f"all runs: {' '.join(common)}" if common else ""


@dataclass
class Curve:
    """One line of a learning-curve panel; `low`/`high` bound its band (NaN where there is none)."""

    label: str
    epochs: list[int]
    values: list[float]
    low: list[float] | None = None
    high: list[float] | None = None


def _below(interval: Interval) -> float:
    """How far the (clipped) interval reaches below the mean; 0 without an interval."""
    return 0.0 if interval.low is None else interval.mean - interval.low


def _above(interval: Interval) -> float:
    return 0.0 if interval.high is None else interval.high - interval.mean


def run_curves(runs: list[Run], key: str) -> list[Curve]:
    return [Curve(run.label, [r["epoch"] for r in run.metrics], _values(run.metrics, key)) for run in runs]


def group_curves(groups: list[Group], key: str) -> list[Curve]:
    """Per group with counted runs: the mean at each epoch over the runs that reached it, and its 95% interval."""
    curves = []
    for group in groups:
        points = per_epoch([[(r["epoch"], v) for r, v in zip(run.metrics, _values(run.metrics, key))]
                            for run in group.counted], bounds=bounds_of(key))
        if points:
            curves.append(Curve(f"{group.label} (n={len(group.counted)})", [e for e, _ in points],
                                [i.mean for _, i in points], [math.nan if i.low is None else i.low for _, i in points],
                                [math.nan if i.high is None else i.high for _, i in points]))
    return curves


def plot_learning_curves(runs: list[Run], groups: list[Group] | None, common: list[str], path: Path) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    panels = [("train_loss", "training loss", "cross-entropy (nats)"),
              ("val_loss", "validation loss", "cross-entropy (nats)"),
              ("val_accuracy", "validation accuracy", "accuracy (fraction correct)")]
    for ax, (key, title, unit) in zip(axes, panels):
        seen = []
        for curve in group_curves(groups, key) if groups else run_curves(runs, key):
            seen += curve.values
            line, = ax.plot(curve.epochs, curve.values, marker="o" if len(curve.epochs) < 3 else None, markersize=3,
                            label=curve.label)
            if curve.low is not None:
                ax.fill_between(curve.epochs, curve.low, curve.high, color=line.get_color(), alpha=0.2, linewidth=0)
        if key != "val_accuracy":
            _log_if_decades(ax, seen)
        ax.set(title=title, xlabel="epoch", ylabel=unit)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    count = len(groups) if groups else len(runs)
    _legend_below(fig, axes[0], count, "config (overrides): mean over seeds, band: 95% interval of the mean"
                  if groups else "run (overrides)")
    fig.suptitle("Learning curves" + (f"\n{_subtitle(common)}" if common else ""))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def plot_isolation(groups: list[Group], common: list[str], path: Path) -> str:
    """Best validation accuracy against the x key of runner.report.stats.isolation_axes, a line per value of the rest."""
    import matplotlib.pyplot as plt

    varying = varying_keys([g.config for g in groups])
    x_key, line_keys = isolation_axes(varying)
    numeric = is_numeric(varying[x_key])
    categories = sorted(set(varying[x_key]))
    lines: dict[str, list[tuple[float, Interval]]] = {}
    for i, group in enumerate(groups):
        name = " ".join(f"{short_override(k)}={varying[k][i]}" for k in line_keys)
        x = float(varying[x_key][i]) if numeric else categories.index(varying[x_key][i])
        lines.setdefault(name, []).append((x, group.interval("best_val_accuracy")))
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for j, (name, points) in enumerate(sorted(lines.items())):
        points.sort(key=lambda p: p[0])
        # side by side at a category, so that error bars of different lines do not hide each other
        shift = 0 if numeric else 0.08 * (j - (len(lines) - 1) / 2)
        ax.errorbar([x + shift for x, _ in points], [i.mean for _, i in points],
                    yerr=[[_below(i) for _, i in points], [_above(i) for _, i in points]],  # clipped: uneven
                    marker="o", capsize=4, label=name or None)
    if numeric:
        _log_if_decades(ax, [float(v) for v in varying[x_key]], axis="x")
    else:
        ax.set_xticks(range(len(categories)), categories)
    ax.set(xlabel=short_override(x_key), ylabel="best validation accuracy (mean over seeds)")
    ax.grid(True, alpha=0.3)
    if line_keys:
        ax.legend(title=" ".join(short_override(k) for k in line_keys), fontsize="small")
    ax.set_title(f"Best validation accuracy against {short_override(x_key)}: mean and 95% interval over seeds"
                 + (f"\n{_subtitle(common)}" if common else ""), fontsize="medium")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def _legend_below(fig, ax, count: int, title: str = "run (overrides)") -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(count, 3), fontsize="small", title=title)


def plot_grad_norms(runs: list[Run], common: list[str], path: Path) -> str:
    import matplotlib.pyplot as plt

    moments = [("first", lambda d: d[0]), ("middle", lambda d: d[len(d) // 2]), ("last", lambda d: d[-1])]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharey=True, constrained_layout=True)
    names: list[str] = []
    for ax, (moment, pick) in zip(axes, moments):
        steps = set()
        for run in runs:
            record = pick(run.diagnostics)
            steps.add(record["step"])
            layers = record["layers"]
            names = max(names, [layer["name"] for layer in layers], key=len)
            line, = ax.plot(range(len(layers)), _values(layers, "grad_norm"), marker="o", markersize=3,
                            label=run.label)
            bad = [i for i, layer in enumerate(layers) if layer["grad_norm"] is None]
            if bad:  # not finite (NaN or inf): a cross along the top of the panel
                ax.plot(bad, [0.96] * len(bad), "x", color=line.get_color(), transform=ax.get_xaxis_transform())
                ax.text(0.01, 0.99, "× not finite", transform=ax.transAxes, va="top", fontsize="small")
        ax.set_yscale("log")
        when = f"step {steps.pop()}" if len(steps) == 1 else "per run"
        ax.set(title=f"{moment} diagnosed step ({when})", xlabel="layer (input → output)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("‖∂loss/∂kernel‖₂ (log scale)")
    _layer_ticks(axes, names)
    _legend_below(fig, axes[0], len(runs))
    fig.suptitle("Gradient norm of each layer's weights" + (f"\n{_subtitle(common)}" if common else ""))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def learning_rate_line(run: Run) -> tuple[str, list[int], list[float]]:
    """(label, steps, rates): the rate applied at every step of the run, from its lr_trace.jsonl (empty without)."""
    steps, rates = [], []
    for epoch in read_jsonl(run.path / LR_TRACE):
        steps += range(epoch["step"], epoch["step"] + len(epoch["lr"]))
        rates += [math.nan if v is None else float(v) for v in epoch["lr"]]  # null: not finite
    return run.label, steps, rates


def plot_learning_rate(lines: list[tuple[str, list[int], list[float]]], common: list[str], path: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), constrained_layout=True)
    seen = []
    for label, steps, rates in lines:
        seen += rates
        ax.plot(steps, rates, marker="o" if len(steps) < 3 else None, markersize=3, linewidth=1.2, label=label)
    _log_if_decades(ax, seen)
    ax.set(xlabel="training step", ylabel="learning rate (schedule × plateau scale)")
    ax.grid(True, which="both", alpha=0.3)
    _legend_below(fig, ax, len(lines))
    fig.suptitle("Learning rate applied at each step" + (f"\n{_subtitle(common)}" if common else ""))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def _layer_ticks(axes, names: list[str]) -> None:
    every = max(1, math.ceil(len(names) / 12))
    ticks = list(range(0, len(names), every))
    if names and ticks[-1] != len(names) - 1:
        ticks.append(len(names) - 1)
    for ax in axes:
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45, ha="right", fontsize="small")


def plot_activations(runs: list[Run], path: Path) -> str:
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors
    from matplotlib.ticker import MaxNLocator

    panels = [("act_std", "activation std", "std of activations"),
              ("saturated_fraction", "saturated", "fraction of outputs near an asymptote"),
              ("dead_fraction", "dead units", "fraction of units ≤ 0 on the whole batch")]
    fig, axes = plt.subplots(len(runs), 3, figsize=(15, 3.2 * len(runs) + 0.8), squeeze=False,
                             constrained_layout=True)
    hidden = max(len(run.diagnostics[0]["layers"]) - 1 for run in runs)  # the head has no activation
    norm = colors.Normalize(vmin=0, vmax=max(hidden - 1, 1))
    cmap = plt.get_cmap("viridis")
    for row, run in zip(axes, runs):
        steps = [d["step"] for d in run.diagnostics]
        for ax, (key, title, unit) in zip(row, panels):
            values_seen = []
            for i in range(len(run.diagnostics[0]["layers"]) - 1):
                values = [_values([d["layers"][i]], key)[0] for d in run.diagnostics]
                values_seen += values
                ax.plot(steps, values, color=cmap(norm(i)), linewidth=1.2)
            if all(math.isnan(v) for v in values_seen):
                ax.text(0.5, 0.5, "not defined for this activation", ha="center", va="center",
                        transform=ax.transAxes, color="grey")
                ax.set_xlim(min(steps), max(steps) + 1)
            if key == "act_std":
                _log_if_decades(ax, values_seen)
            else:
                ax.set_ylim(-0.03, 1.03)
            ax.set(title=f"{run.label}: {title}", xlabel="training step", ylabel=unit)
            ax.title.set_fontsize("small")
            ax.grid(True, alpha=0.3)
    bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.8,
                       label="hidden layer (0 = next to the input)")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    fig.suptitle("Activations of each hidden layer during training")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name
