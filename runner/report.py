"""`python -m runner.report PATH...`: plots and a results table of finished (or running) runs.

A PATH is a run dir (it has `.hydra/` and metrics.jsonl or summary.json) or any dir above run dirs (a multirun
dir, `outputs/`): run dirs are found recursively. The report goes to `PATH/report/` for one PATH and beside
the first PATH (`PATH/../report/`) for several; `--out DIR` puts it elsewhere. It is built in a temp dir and
renamed into place, so a reader never sees half a report.

    learning_curves.png   train loss, validation loss and validation accuracy of every run against epoch
    grad_norms.png        each layer's gradient norm against depth at the first, middle and last diagnosed step
    activations.png       per run: activation std, saturated and dead fraction of every layer against step
    report.md, report.csv one row per run, sorted by best validation accuracy (also printed)

The two diagnostics plots need runs with trainer.diagnostics_every > 0. A multirun writes its report into its
sweep dir when it ends (runner.callbacks.MultirunReport).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import yaml

from runner.console import Console, error, format_cell
from runner.errors import UserError
from runner.outputs import read_jsonl

CSV_COLUMNS = ("run_dir", "overrides", "status", "best_val_accuracy", "test_accuracy", "epochs", "wall_time_s",
               "diverged_at_step", "diverged_layer", "grad_norm_ratio", "reason")
OPTIONAL_COLUMNS = ("diverged_at_step", "diverged_layer", "grad_norm_ratio", "reason")  # shown when any run has one
REPORT_FILES = (".md", ".csv", ".png")  # what a report dir holds; a dir with anything else is the user's
MAX_ACTIVATION_ROWS = 12  # runs drawn in activations.png; more would make each row unreadable


@dataclass
class Run:
    """One run dir's files, as far as they exist."""

    path: Path
    overrides: list[str]  # what was typed, hydra.* settings left out
    summary: dict
    metrics: list[dict]
    diagnostics: list[dict]
    label: str = ""  # the overrides that tell this run apart from the others in the report

    @property
    def sort_key(self) -> float:
        value = self.summary.get("best_val_accuracy")
        return -value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def find_run_dirs(path: Path) -> list[Path]:
    """`path` itself if it is a run dir, else every run dir below it, in name order."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such directory; give run dirs or multirun dirs (e.g. outputs/multirun/...)")
    candidates = [path] if (path / ".hydra").is_dir() else sorted(p.parent for p in path.rglob(".hydra"))
    runs = [p for p in candidates if (p / "metrics.jsonl").exists() or (p / "summary.json").exists()]
    if not runs:
        raise UserError(f"{path}: no run dirs in it (a run dir has .hydra/ and metrics.jsonl or summary.json)")
    return runs


def load_run(path: Path) -> Run:
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    summary_file = path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {"status": "running"}
    return Run(path, [o for o in overrides or [] if not o.lstrip("+~").startswith("hydra.")], summary or {},
               read_jsonl(path / "metrics.jsonl"), read_jsonl(path / "diagnostics.jsonl"))


def label_runs(runs: list[Run]) -> list[str]:
    """Give each run the overrides it does not share with all the others; returns the shared ones."""
    common = [o for o in runs[0].overrides if all(o in r.overrides for r in runs)] if len(runs) > 1 else []
    for run in runs:
        run.label = " ".join(_short(o) for o in run.overrides if o not in common) or "defaults"
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    for run in runs:  # the same overrides twice (e.g. two single runs): the dir names tell them apart
        if counts[run.label] > 1:
            run.label = f"{run.label} ({run.path.name})"
    return common


def _short(override: str) -> str:
    """`+experiment/vanishing_gradients=elu_he` -> `vanishing_gradients=elu_he`: a variant by its own name."""
    key, sep, value = override.lstrip("+~").partition("=")
    return key.rsplit("/", 1)[-1] + sep + value


def default_out(paths: Sequence[Path]) -> Path:
    first = Path(paths[0])
    return first / "report" if len(paths) == 1 else first.resolve().parent / "report"


def write_report(paths: Sequence[Path], out: Path | None = None, plots: bool = True,
                 console: Console | None = None) -> Path:
    """Find the runs under `paths`, write their report into `out` (see the module doc); returns `out`."""
    run_dirs = sorted({d.resolve() for p in paths for d in find_run_dirs(Path(p))})
    runs = sorted((load_run(d) for d in run_dirs), key=lambda r: (r.sort_key, str(r.path)))
    common = label_runs(runs)
    out = Path(out) if out is not None else default_out(paths)
    rows = [table_row(run, out) for run in runs]

    def build(tmp: Path) -> None:
        (tmp / "report.csv").write_text(to_csv(rows))
        figures = draw(runs, common, tmp) if plots else []
        (tmp / "report.md").write_text(to_markdown(runs, rows, common, figures))

    replace_dir(out, build)
    if console is not None:
        columns = ["run", "status", "best_val_accuracy", "test_accuracy", "epochs", "wall_time_s"]
        columns += ["reason"] if any(row["reason"] for row in rows) else []
        console.table(f"{_runs(len(runs))}, best validation accuracy first"
                      + (f"; all with {' '.join(common)}" if common else ""), columns,
                      [[run.label] + [row[c] for c in columns[1:]] for run, row in zip(runs, rows)])
        console.info(f"report in {out}")
    return out


def table_row(run: Run, out: Path) -> dict:
    s = run.summary
    return {"run_dir": os.path.relpath(run.path, out.resolve().parent), "overrides": " ".join(run.overrides),
            "status": s.get("status"), "best_val_accuracy": s.get("best_val_accuracy"),
            "test_accuracy": s.get("test_accuracy"), "epochs": s.get("epochs", len(run.metrics)),
            "wall_time_s": s.get("wall_time_s"), "diverged_at_step": s.get("diverged_at_step"),
            "diverged_layer": s.get("diverged_layer"), "grad_norm_ratio": s.get("grad_norm_ratio"),
            "reason": s.get("reason")}


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS} for row in rows)
    return buffer.getvalue()


def to_markdown(runs: list[Run], rows: list[dict], common: list[str], figures: list[str]) -> str:
    optional = [c for c in OPTIONAL_COLUMNS if any(r[c] is not None for r in rows)]
    columns = ["run", "status", "best_val_accuracy", "test_accuracy", "epochs", "wall_time_s", *optional]
    lines = ["# Report", "", f"{_runs(len(runs))}, sorted by best validation accuracy."]
    if common:
        lines.append(f"All runs: `{' '.join(common)}`.")
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for run, row in zip(runs, rows):
        cells = [f"`{run.label}`"] + [_cell(row[c]) for c in columns[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"![{name}]({name})\n" for name in figures]
    return "\n".join(lines) + "\n"


def _runs(count: int) -> str:
    return f"{count} run" + ("s" if count != 1 else "")


def _cell(value) -> str:
    return format_cell(value).replace("|", "\\|")  # a pipe would end the Markdown cell


def replace_dir(out: Path, build: Callable[[Path], None]) -> None:
    """Build a directory in a temp dir beside `out`, then swap it in for `out` (only if `out` is a report)."""
    if out.exists() and (not out.is_dir() or any(p.is_dir() or p.suffix not in REPORT_FILES for p in out.iterdir())):
        raise UserError(f"{out}: exists and is not a report dir (it holds other files); valid: a new dir or an "
                        "earlier report's dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        build(tmp)
        tmp.chmod(0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- plots ----

def draw(runs: list[Run], common: list[str], out: Path) -> list[str]:
    """Write the PNGs that the runs have data for; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, whatever the environment says
    figures = []
    if any(run.metrics for run in runs):
        figures.append(plot_learning_curves(runs, common, out / "learning_curves.png"))
    diagnosed = [run for run in runs if run.diagnostics]
    if diagnosed:
        figures.append(plot_grad_norms(diagnosed, common, out / "grad_norms.png"))
        figures.append(plot_activations(diagnosed[:MAX_ACTIVATION_ROWS], out / "activations.png"))
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


def plot_learning_curves(runs: list[Run], common: list[str], path: Path) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    panels = [("train_loss", "training loss", "cross-entropy (nats)"),
              ("val_loss", "validation loss", "cross-entropy (nats)"),
              ("val_accuracy", "validation accuracy", "accuracy (fraction correct)")]
    for ax, (key, title, unit) in zip(axes, panels):
        seen = []
        for run in runs:
            epochs, values = [r["epoch"] for r in run.metrics], _values(run.metrics, key)
            seen += values
            ax.plot(epochs, values, marker="o" if len(epochs) < 3 else None, markersize=3, label=run.label)
        if key != "val_accuracy":
            _log_if_decades(ax, seen)
        ax.set(title=title, xlabel="epoch", ylabel=unit)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    _legend_below(fig, axes[0], len(runs))
    fig.suptitle("Learning curves" + (f"\n{_subtitle(common)}" if common else ""))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def _legend_below(fig, ax, count: int) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(count, 3), fontsize="small",
               title="run (overrides)")


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="run dirs or dirs above run dirs")
    parser.add_argument("--out", type=Path, help="where to write the report (default: see module doc)")
    parser.add_argument("--no-plots", action="store_true", help="the table only")
    args = parser.parse_args(argv)
    try:
        write_report(args.paths, args.out, plots=not args.no_plots, console=Console())
    except UserError as e:
        error(str(e))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
