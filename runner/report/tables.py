"""`python -m runner.report PATH...`: plots and a results table of finished (or running) runs.

A PATH is a run dir (it has `.hydra/` and metrics.jsonl or summary.json) or any dir above run dirs (a multirun
dir, `outputs/`): run dirs are found recursively. The report goes to `PATH/report/` for one PATH and beside
the first PATH (`PATH/../report/`) for several; `--out DIR` puts it elsewhere. It is built in a temp dir and
renamed into place, so a reader never sees half a report. A run whose summary.json or .hydra/overrides.yaml is not
what the runner writes (empty, cut off, not JSON, the wrong type: runner/rundir/records.py) is left out, and so is a bad
line of metrics.jsonl, each with one warning line naming the file; when no run can be read, one error line says
why (exit 2).

    report.md, report.csv one row per run, sorted by best validation accuracy (also printed)
    report_groups.csv     per config over seeds: n, and mean, sd, 95% interval of each metric (when a config
                          has two runs or more; report.md's "Over seeds" section, also printed)
    report_ablation.csv   per config: its difference from the baseline, paired by seed (with --baseline;
                          report.md's "Ablation" section, also printed)
    learning_curves.png   train loss, validation loss and validation accuracy against epoch: one line per run, or,
                          when runs repeat a config over seeds, per config its mean and 95% interval at each epoch
    isolation.png         best validation accuracy (mean, 95% interval) against one varying override, one line per
                          value of the others (the rule: runner.report.stats.isolation_axes); when any override varies
    grad_norms.png        each layer's gradient norm against depth at the first, middle and last diagnosed step
    activations.png       per run: activation std, saturated and dead fraction of every layer against step
    learning_rate.png     the learning rate applied at every step, one line per run (runs with lr_trace.jsonl);
                          log scale when it spans more than a factor of 10

Runs whose overrides differ only in `trainer.seed` are one config (runner.report.stats has every definition): its
metrics are best_val_accuracy, test_accuracy and the final epoch's train_loss and val_loss, each as mean, sample
sd and 95% Student-t interval of the mean, clipped to the metric's range (accuracies [0, 1], losses >= 0), over
the runs that finished (completed, early stopped or diverged); failed, interrupted and running runs are counted,
not used. `--baseline "activation=relu"` names the baseline config by overrides (several: space- or
comma-separated); each other config's difference from it is taken seed by seed over the seeds both ran, `*`
where its 95% interval excludes 0. The PNGs are drawn by runner.report.plots.

The two diagnostics plots need runs with trainer.diagnostics_every > 0. A multirun writes its report into its
sweep dir when it ends (runner.cli.callbacks.MultirunReport).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


from runner.console import Console, command, format_cell
from runner.errors import UserError
from runner.report.plots import draw
from runner.report.runs import FINAL_EPOCH_METRICS, Group, Run
from runner.report.stats import (INTERVAL_METHOD, Interval, config_of, difference_bounds, exclusion_note,
                                 find_baseline, group_indices, paired_difference, short_override, sort_seeds)
from runner.rundir.outputs import find_run_dirs, read_jsonl
from runner.rundir.records import METRICS_FILE, SUMMARY_FILE, read_metrics, read_overrides, read_summary

CSV_COLUMNS = ("run_dir", "overrides", "status", "best_val_accuracy", "test_accuracy", "epochs", "wall_time_s",
               "diverged_at_step", "diverged_layer", "grad_norm_ratio", "reason")
OPTIONAL_COLUMNS = ("diverged_at_step", "diverged_layer", "grad_norm_ratio", "reason")  # shown when any run has one
REPORT_FILES = (".md", ".csv", ".png")  # what a report dir holds; a dir with anything else is the user's
GROUP_METRICS = ("best_val_accuracy", "test_accuracy", "train_loss", "val_loss")
ABLATION_METRICS = ("best_val_accuracy", "test_accuracy")
GROUP_COLUMNS = ("config", "overrides", "n", "runs", "left_out", "seeds",
                 *(f"{m}_{s}" for m in GROUP_METRICS for s in ("mean", "sd", "ci_low", "ci_high", "n")))
ABLATION_COLUMNS = ("config", "overrides", "baseline", "seeds",
                    *(f"{m}_{s}" for m in ABLATION_METRICS for s in ("diff", "sd", "ci_low", "ci_high", "n",
                                                                      "excludes_zero")))


@dataclass
class Ablation:
    """Each other group's difference from the baseline group, paired by seed, largest effect first."""

    baseline: Group
    rows: list[tuple[Group, dict[str, tuple[list[str], Interval | None]]]]


def load_run(path: Path, warn: Callable[[str], None] | None = None) -> Run:
    """One run dir's files. A summary.json or .hydra/overrides.yaml the runner did not write raises UserError naming
    it; a bad line of metrics.jsonl too, or, given `warn`, is left out and told to it (one line for the file)."""
    overrides = _overrides(path / ".hydra" / "overrides.yaml")
    summary_file = path / SUMMARY_FILE
    summary = read_summary(summary_file) if summary_file.exists() else {"status": "running"}
    bad: list[str] = []
    metrics = read_metrics(path / METRICS_FILE, on_bad_line=None if warn is None else bad.append)
    if bad:
        more = f" (and {len(bad) - 1} more bad line{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        warn(f"{bad[0]}{more}; left out of the report")
    # hydra.* and trainer.resume say where and how a run ran, not what it is (a relaunch adds trainer.resume).
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "trainer.resume="))]
    return Run(path, kept, summary, metrics,
               [r for r in read_jsonl(path / "diagnostics.jsonl") if isinstance(r, dict)])


def _overrides(path: Path) -> list[str]:
    """What Hydra saved of the run's command line ([] when it saved none)."""
    return read_overrides(path) if path.exists() else []


def load_runs(run_dirs: Sequence[Path], console: Console | None = None) -> list[Run]:
    """The runs of these dirs. One whose files cannot be read is left out, and a bad line of metrics.jsonl, each
    with one warning line naming the file and what is wrong; when no run can be read, one UserError says why."""
    warn = console.warn if console is not None else Console(live=False).warn
    runs, lines, unread = [], [], []
    for run_dir in run_dirs:
        try:
            runs.append(load_run(run_dir, lines.append))
        except UserError as e:
            unread.append(str(e))
            lines.append(f"{e}; this run is left out of the report")
    if not runs:
        more = f" (and {len(unread) - 1} more run dir{'s' if len(unread) > 2 else ''})" if len(unread) > 1 else ""
        raise UserError(f"no run could be read: {unread[0]}{more}")
    for line in lines:
        warn(line)
    return runs


def label_runs(runs: list[Run]) -> list[str]:
    """Give each run the overrides it does not share with all the others; returns the shared ones."""
    common = [o for o in runs[0].overrides if all(o in r.overrides for r in runs)] if len(runs) > 1 else []
    for run in runs:
        run.label = " ".join(short_override(o) for o in run.overrides if o not in common) or "defaults"
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    for run in runs:  # the same overrides twice (e.g. two single runs): the dir names tell them apart
        if counts[run.label] > 1:
            run.label = f"{run.label} ({run.path.name})"
    return common


def default_out(paths: Sequence[Path]) -> Path:
    first = Path(paths[0])
    return first / "report" if len(paths) == 1 else first.resolve().parent / "report"


def write_report(paths: Sequence[Path], out: Path | None = None, plots: bool = True,
                 console: Console | None = None, baseline: str | None = None) -> Path:
    """Find the runs under `paths`, write their report into `out` (see the module doc); returns `out`.
    `baseline` (overrides naming one group) adds the ablation; one that names no group or several is a
    runner.report.stats.BaselineError, raised before anything is written."""
    run_dirs = sorted({d.resolve() for p in paths for d in find_run_dirs(Path(p))})
    runs = sorted(load_runs(run_dirs, console), key=lambda r: (r.sort_key, str(r.path)))
    common = label_runs(runs)
    groups = make_groups(runs)
    grouped = any(len(group.runs) > 1 for group in groups)
    ablation = ablate(groups, baseline) if baseline is not None else None
    out = Path(out) if out is not None else default_out(paths)
    rows = [table_row(run, out) for run in runs]

    def build(tmp: Path) -> None:
        (tmp / "report.csv").write_text(to_csv(rows))
        if grouped:
            (tmp / "report_groups.csv").write_text(_csv(GROUP_COLUMNS, [group_row(g) for g in groups]))
        if ablation is not None:
            (tmp / "report_ablation.csv").write_text(_csv(ABLATION_COLUMNS, ablation_rows(ablation)))
        figures = draw(runs, groups, grouped, common, tmp) if plots else []
        sections = (groups_markdown(groups) if grouped else []) + (ablation_markdown(ablation) if ablation else [])
        (tmp / "report.md").write_text(to_markdown(runs, rows, common, figures, sections))

    replace_dir(out, build)
    if console is not None:
        columns = ["run", "status", "best_val_accuracy", "test_accuracy", "epochs", "wall_time_s"]
        columns += ["reason"] if any(row["reason"] for row in rows) else []
        console.table(f"{_runs(len(runs))}, best validation accuracy first"
                      + (f"; all with {' '.join(common)}" if common else ""), columns,
                      [[run.label] + [row[c] for c in columns[1:]] for run, row in zip(runs, rows)])
        if grouped:
            console.table(*groups_table(groups, GROUP_METRICS[:2]))
        if ablation is not None:
            console.table(*ablation_table(ablation))
        console.info(f"report in {out}")
    return out


# ---- over seeds ----

def make_groups(runs: list[Run]) -> list[Group]:
    """The runs' groups (runner.report.stats), labelled by the overrides that tell them apart, best first."""
    configs = [config_of(run.overrides) for run in runs]
    groups = [Group(configs[ix[0]], [runs[i] for i in ix]) for ix in group_indices(configs)]
    common = [o for o in groups[0].config if all(o in g.config for g in groups)] if len(groups) > 1 else []
    for group in groups:
        group.label = " ".join(short_override(o) for o in group.config if o not in common) or "defaults"
    return sorted(groups, key=lambda g: g.sort_key)


def ablate(groups: list[Group], baseline: str) -> Ablation:
    base = groups[find_baseline(baseline, [g.config for g in groups], [g.label for g in groups])]
    rows = [(g, {m: paired_difference(g.by_seed(m), base.by_seed(m), difference_bounds(m)) for m in ABLATION_METRICS})
            for g in groups if g is not base]

    def effect(row) -> tuple:
        difference = row[1]["best_val_accuracy"][1]
        return (-difference.mean if difference else math.inf, row[0].label)
    return Ablation(base, sorted(rows, key=effect))


def _count(group: Group) -> str:
    """`5`, or `4 of 5 (1 failed)` when runs are left out of the statistics."""
    note = exclusion_note([run.summary.get("status") for run in group.runs])
    return f"{len(group.counted)} of {len(group.runs)} ({note})" if note else str(len(group.runs))


def _seeds(group: Group) -> str:
    return " ".join(sort_seeds({run.seed for run in group.counted if run.seed is not None}))


def group_row(group: Group) -> dict:
    row = {"config": group.label, "overrides": " ".join(group.config), "n": len(group.counted),
           "runs": len(group.runs), "left_out": exclusion_note([r.summary.get("status") for r in group.runs]),
           "seeds": _seeds(group)}
    for metric in GROUP_METRICS:
        row.update(_interval_fields(metric, "mean", group.interval(metric)))
    return row


def _interval_fields(metric: str, name: str, interval: Interval | None) -> dict:
    values = (interval.mean, interval.sd, interval.low, interval.high, interval.n) if interval else (None,) * 5
    return dict(zip((f"{metric}_{s}" for s in (name, "sd", "ci_low", "ci_high", "n")), values))


def ablation_rows(ablation: Ablation) -> list[dict]:
    rows = []
    for group, differences in ablation.rows:
        row = {"config": group.label, "overrides": " ".join(group.config), "baseline": ablation.baseline.label,
               "seeds": " ".join(differences["best_val_accuracy"][0])}
        for metric, (_, interval) in differences.items():
            row.update(_interval_fields(metric, "diff", interval))
            row[f"{metric}_excludes_zero"] = interval.excludes_zero if interval else None
        rows.append(row)
    return rows


def _ci(interval: Interval | None, signed: bool = False, n: int | None = None) -> str:
    """`[0.7711, 0.8756]`, with the interval's own n when it differs from the row's."""
    if interval is None or interval.low is None:
        return ""
    fmt = (lambda v: f"{v:+.4g}") if signed else format_cell
    own_n = f" (n={interval.n})" if n not in (None, interval.n) else ""
    return f"[{fmt(interval.low)}, {fmt(interval.high)}]{own_n}"


def groups_table(groups: list[Group], metrics: Sequence[str]) -> tuple[str, list[str], list[list]]:
    """Title, columns and rows of the groups' table for the given metrics (with data)."""
    shown = [m for m in metrics if any(g.interval(m) for g in groups)]
    columns = ["config", "n"] + [c for m in shown for c in (_metric_name(m), "sd", "95% CI")]
    rows = []
    for group in groups:
        row: list = [group.label, _count(group)]
        for metric in shown:
            interval = group.interval(metric)
            row += [interval.mean, interval.sd, _ci(interval, n=len(group.counted))] if interval else ["", "", ""]
        rows.append(row)
    title = (f"{plural(len(groups), 'config')} over seeds: mean, sample sd and 95% t-interval of the mean "
             "(clipped to the metric's range), best validation accuracy first")
    return title, columns, rows


def _metric_name(metric: str) -> str:
    return f"final {metric}" if metric in FINAL_EPOCH_METRICS else metric


def ablation_table(ablation: Ablation) -> tuple[str, list[str], list[list]]:
    columns = ["config", "seeds"] + [c for m in ABLATION_METRICS for c in (f"Δ {m}", "95% CI")]
    rows = []
    for group, differences in ablation.rows:
        seeds, _ = differences["best_val_accuracy"]
        row: list = [group.label, len(seeds)]
        for metric in ABLATION_METRICS:
            interval = differences[metric][1]
            row += ([f"{interval.mean:+.4g}" + (" *" if interval.excludes_zero else ""),
                     _ci(interval, signed=True, n=len(seeds))] if interval else ["", ""])
        rows.append(row)
    title = (f"difference from the baseline {ablation.baseline.label}, paired by seed: mean and 95% t-interval; "
             "* where the interval excludes 0; largest effect first")
    return title, columns, rows


def groups_markdown(groups: list[Group]) -> list[str]:
    _, columns, rows = groups_table(groups, GROUP_METRICS)
    return ["## Over seeds", "",
            f"{plural(len(groups), 'config')}; runs whose overrides differ only in `trainer.seed` are one. Per "
            "metric: the mean, the sample standard deviation (sd) and the 95% confidence interval of the mean, a "
            f"{INTERVAL_METHOD}; failed, interrupted and running runs are left out and counted "
            "(`4 of 5 (1 failed)`). `report_groups.csv` has every number.", "",
            *_markdown_table(columns, [[f"`{row[0]}`", *row[1:]] for row in rows]), ""]


def ablation_markdown(ablation: Ablation) -> list[str]:
    _, columns, rows = ablation_table(ablation)
    return ["## Ablation", "",
            f"Baseline: `{ablation.baseline.label}`. For each seed both configs ran, the config's value minus "
            f"the baseline's; Δ is the mean of those differences with its 95% interval (a {INTERVAL_METHOD}), "
            "`*` where the interval "
            "excludes 0 (the difference holds beyond seed-to-seed noise at that level). Largest Δ best "
            "validation accuracy first; `report_ablation.csv` has every number.", "",
            *_markdown_table(columns, [[f"`{row[0]}`", *row[1:]] for row in rows]), ""]


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows])


def _csv(columns: Sequence[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if row[k] is None else row[k] for k in columns} for row in rows)
    return buffer.getvalue()


def table_row(run: Run, out: Path) -> dict:
    s = run.summary
    return {"run_dir": os.path.relpath(run.path, out.resolve().parent), "overrides": " ".join(run.overrides),
            "status": s.get("status"), "best_val_accuracy": s.get("best_val_accuracy"),
            "test_accuracy": s.get("test_accuracy"), "epochs": s.get("epochs", len(run.metrics)),
            "wall_time_s": s.get("wall_time_s"), "diverged_at_step": s.get("diverged_at_step"),
            "diverged_layer": s.get("diverged_layer"), "grad_norm_ratio": s.get("grad_norm_ratio"),
            "reason": s.get("reason")}


def to_csv(rows: list[dict]) -> str:
    return _csv(CSV_COLUMNS, rows)


def to_markdown(runs: list[Run], rows: list[dict], common: list[str], figures: list[str],
                sections: Sequence[str] = ()) -> str:
    optional = [c for c in OPTIONAL_COLUMNS if any(r[c] is not None for r in rows)]
    columns = ["run", "status", "best_val_accuracy", "test_accuracy", "epochs", "wall_time_s", *optional]
    lines = ["# Report", "", f"{_runs(len(runs))}, sorted by best validation accuracy."]
    if common:
        lines.append(f"All runs: `{' '.join(common)}`.")
    lines += ["", *_markdown_table(columns, [[f"`{run.label}`"] + [row[c] for c in columns[1:]]
                                             for run, row in zip(runs, rows)]), ""]
    lines += sections
    lines += [f"![{name}]({name})\n" for name in figures]
    return "\n".join(lines) + "\n"


def _runs(count: int) -> str:
    return plural(count, "run")


def plural(count: int, noun: str) -> str:
    """`1 config`, `2 configs`."""
    return f"{count} {noun}" + ("s" if count != 1 else "")


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


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Write the report; 0, or 2 after one line for a mistake."""
    parser = argparse.ArgumentParser(prog="python -m runner.report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="run dirs or dirs above run dirs")
    parser.add_argument("--out", type=Path, help="where to write the report (default: see module doc)")
    parser.add_argument("--no-plots", action="store_true", help="the table only")
    parser.add_argument("--baseline", metavar="OVERRIDES",
                        help='add an ablation against the group with these overrides, e.g. "activation=relu" '
                             '(several: space- or comma-separated)')
    args = parser.parse_args(argv)
    write_report(args.paths, args.out, plots=not args.no_plots, console=Console(), baseline=args.baseline)
    return 0

