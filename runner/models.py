"""`python -m runner.models [DIRS...]`: the catalog of finished runs: what each net is, what it learned, where it is.

Run dirs are found under each DIR (default `outputs/`) recursively, multirun jobs and replicas' members included
(runner/rundir/outputs.py:find_run_dirs). A run is listed when its summary.json says it finished (completed, early_stopped
or diverged: runner/rundir/relaunch.py's FINAL) with

    dataset         dataset.name of its saved config
    input_shape     one example's shape, channels last (summary.json; empty for runs made before it was recorded)
    architecture    mlp or cnn, activation, normalization (its position when post)
    layers          hidden layers: conv channels, dense widths (3x100 is three of 100)
    test_accuracy   summary.json's
    date            when it finished (summary.json's modification time)
    path            its run dir

Only the two small files are read (summary.json, .hydra/config.yaml) and nothing imports JAX, so a catalog of
1,000 runs lists in well under a second. A run dir whose files cannot be read is skipped; one warning line says
which. `--sort` orders by test_accuracy (highest first), date (newest first, the default), dataset or path;
`--dataset NAME` keeps one dataset's runs; `--json` prints the list as JSON instead of a table.

`transfer.source=best:DATASET` (runner/reuse/transfer.py) takes `best_run`: the most accurate finished run on DATASET
under outputs/ whose input shape is the current run's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence


from runner.console import command
from runner.errors import ArgumentParser
from runner.reuse.catalog import COLUMNS, DEFAULT_DIR, SORTS, catalog


def shown_path(path: Path) -> str:
    """Relative to the current dir when below it: what a user types."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_args(argv: Sequence[str] | None):
    parser = ArgumentParser(prog="python -m runner.models", description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, metavar="DIRS",
                        help=f"where to look for run dirs, recursively (default: {DEFAULT_DIR}/)")
    parser.add_argument("--dataset", metavar="NAME", help="only runs on this dataset (dataset.name)")
    parser.add_argument("--sort", choices=tuple(SORTS), default="date", help="order (default: date, newest first)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


@command
def main(argv: Sequence[str] | None = None) -> int:
    """List the catalog; 0, or 2 after one line for a mistake."""
    from runner.console import Console

    args = parse_args(argv)
    entries, skipped = catalog(args.dirs or [DEFAULT_DIR], args.dataset)
    console = Console()
    if skipped:
        listed = "; ".join(f"{shown_path(p)} ({why})" for p, why in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        console.warn(f"warning: skipped {len(skipped)} unreadable run dir(s): {listed}{more}")
    entries = sorted(entries, key=SORTS[args.sort])
    if args.json:
        print(json.dumps([{**e.record(), "path": shown_path(e.path)} for e in entries], indent=2))
        return 0
    rows = [[e.dataset, "x".join(map(str, e.input_shape)) if e.input_shape else None, e.architecture, e.layers,
             e.test_accuracy, e.date, shown_path(e.path)] for e in entries]
    console.table(f"{len(entries)} finished run(s){f' on {args.dataset}' if args.dataset else ''}, by {args.sort}",
                  COLUMNS, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
