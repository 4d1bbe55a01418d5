"""`python -m runner.bench`: the runner's speed against the limit, a hand-written JAX loop of the same model.

Each entry of `CASES` is one row: the runner's compiled epoch (composed, built and compiled as a run
does) and the limit's epoch (runner/bench/reference.py) timed alternately on the same synthetic data
(runner/bench/harness.py). Then the runner's epoch data parallel over `--devices` devices against one device
(on a machine with fewer, over CPU devices forced in a subprocess: the cost of splitting, not a speedup),
the evaluation throughput, how fast `python -m runner` answers a mistyped
override, the default run's time to its first epoch line, and peak host memory; and the run-time cost of a
prediction (runner/bench/inference.py: latency at batch 1, throughput at batch 1024, for the default net, the
fast and sparse presets and the default net with batch norm folded). Everything lands in
`<out>/<YYYY-mm-dd_HH-MM-SS>/results.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import jax

from runner.bench.harness import (CHUNKS, EVAL_BATCH_SIZE, MISTAKE, Case, measure_case, measure_data_parallel_anywhere,
                                  measure_evaluation, measure_first_step, measure_mistake_answer, own_peak_memory_mib)
from runner.bench.inference import measure_inference
from runner.console import Console
from runner.rundir.outputs import write_json
from runner.training.loop import CHUNK_SECONDS
from runner.training.process import keep_freed_host_memory

MLP20X100 = ("model.depth=20", "model.width=100", "activation=elu", "initializer=he_normal",
             "normalization=none", "regularizer=[]", "optimizer=adam")

CASES = [
    Case("mlp20x100_b32", MLP20X100, 32, per_step_loop=True),
    Case("mlp20x100_b128", MLP20X100, 128, chunked=True),
    # The cost of per-layer diagnostics: compare this row's ratio with mlp20x100_b32's (same limit loop).
    Case("mlp20x100_b32_diagnostics100", MLP20X100 + ("trainer.diagnostics_every=100",), 32),
    Case("mlp5x300_bn_dropout", ("model.depth=5", "model.width=300"), 128),
    Case("cnn", ("model=cnn",), 128, max_examples=1024, chunked=True),
]

# Data parallel: the 20x100 MLP at batch 128 (rounded down to a multiple of --devices), one device against --devices.
DATA_PARALLEL = (MLP20X100, 128)

# Tiny sizes for tests: the smallest nets of each case's kind (compiling is most of a smoke run: one hidden layer,
# one convolution), batches shrunk to fit the examples, one timed answer to a mistake. Channels go to `model=cnn`
# cases only: on the MLP, model.channels would add convolutions.
SMOKE = {"examples": 16, "epochs": 1, "eval_examples": EVAL_BATCH_SIZE, "mistake_runs": 1,
         "overrides": ("model.depth=1", "model.width=16"), "cnn_overrides": ("model.channels=[4]",)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runner.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=[c.name for c in CASES], metavar="NAME",
                        help=f"cases to run (default all): {' '.join(c.name for c in CASES)}")
    parser.add_argument("--batch-sizes", nargs="+", type=int, metavar="N",
                        help="run every chosen case at each of these batch sizes instead of its own")
    parser.add_argument("--epochs", type=int, help="timed epochs per loop; the median is reported (default 5)")
    parser.add_argument("--examples", type=int, help="synthetic training examples (default 4096)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny nets and sizes ({SMOKE['examples']} examples, 1 epoch), no time-to-first-step run")
    parser.add_argument("--first-step", action=argparse.BooleanOptionalAction, default=None,
                        help="time `python -m runner` to its first epoch (default: on, off with --smoke)")
    parser.add_argument("--devices", type=int, default=4,
                        help="also time the epoch data parallel over N devices against one (default 4; 0 skips)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"), help="base dir of the results")
    parser.add_argument("--inference", action=argparse.BooleanOptionalAction, default=True,
                        help="also time predictions: latency at batch 1, throughput at batch 1024 (default: on)")
    parser.add_argument("--inference-only", action="store_true", help="only the predictions' section")
    args = parser.parse_args(argv)
    args.training = not args.inference_only
    if args.inference_only:
        args.inference, args.devices, args.first_step = True, 0, False
    if args.examples is None:
        args.examples = SMOKE["examples"] if args.smoke else 4096
    if args.epochs is None:
        args.epochs = SMOKE["epochs"] if args.smoke else 5
    args.eval_examples = SMOKE["eval_examples"] if args.smoke else 10 * EVAL_BATCH_SIZE
    args.first_step = (not args.smoke) if args.first_step is None else args.first_step
    for name in ("examples", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.devices < 0 or args.devices == 1:
        parser.error("--devices must be 0 (skip) or >= 2")
    if any(b < 1 for b in args.batch_sizes or ()):
        parser.error("--batch-sizes must be >= 1")
    return args


def chosen_cases(args: argparse.Namespace) -> list[Case]:
    cases = [c for c in CASES if not args.models or c.name in args.models]
    if args.batch_sizes:
        cases = [dataclasses.replace(c, batch_size=b) for c in cases for b in args.batch_sizes]
    if args.smoke:
        cases = [dataclasses.replace(c, overrides=c.overrides + SMOKE["overrides"]
                                     + (SMOKE["cnn_overrides"] if "model=cnn" in c.overrides else ()),
                                     batch_size=min(c.batch_size, args.examples)) for c in cases]
    too_big = [c.name for c in cases if c.batch_size > min(args.examples, c.max_examples or args.examples)]
    if too_big:
        raise SystemExit(f"error: fewer examples than one batch for {', '.join(too_big)}; "
                         "raise --examples or lower --batch-sizes")
    return cases


def machine() -> dict[str, Any]:
    return {"jax": jax.__version__, "backend": jax.default_backend(), "devices": str(jax.devices()),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def main(argv: Sequence[str] | None = None) -> Path:
    """Measure everything and write results.json; returns its path."""
    args = parse_args(argv)
    kept = keep_freed_host_memory()  # as a run does (runner/training/process.py), before JAX starts its threads
    console = Console()
    out_dir = args.out / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    console.info(f"bench: {args.examples} synthetic examples, median of {args.epochs} epochs, "
                 f"devices {jax.devices()}")
    results: dict[str, Any] = {"machine": machine(), "examples": args.examples, "epochs": args.epochs,
                               "host_memory_kept": kept, "cases": []}
    for case in chosen_cases(args) if args.training else []:
        results["cases"].append(measure_case(case, args.examples, args.epochs))
    smoke_overrides = SMOKE["overrides"] if args.smoke else ()
    if args.devices:
        overrides, batch = DATA_PARALLEL
        batch = args.devices * max(1, min(batch, args.examples) // args.devices)  # whole batches split evenly
        results["data_parallel"] = measure_data_parallel_anywhere(overrides + smoke_overrides, batch,
                                                                  max(args.examples, batch), args.epochs, args.devices)
    if args.training:
        results["eval_examples_per_s"] = measure_evaluation(MLP20X100 + smoke_overrides, args.eval_examples,
                                                            args.epochs)
        results["time_to_answer_mistake_s"] = (measure_mistake_answer(SMOKE["mistake_runs"]) if args.smoke
                                               else measure_mistake_answer())
    if args.first_step:
        results.update(measure_first_step())
    if args.inference:
        results["inference"] = measure_inference(args.smoke)
    results["peak_host_memory_mib"] = own_peak_memory_mib()
    path = out_dir / "results.json"
    write_json(path, results)
    show(console, results)
    console.info(f"results in {path}")
    return path


def show(console: Console, results: dict[str, Any]) -> None:
    """The throughput table, then the single measurements."""
    if results["cases"]:
        console.table("training throughput (examples/s, median epoch)",
                      ["case", "batch", "runner", "limit", "runner/limit", "per-step loop", f"{CHUNKS} chunks/whole",
                       "ms/chunk", f"cost at {CHUNK_SECONDS:g} s chunks"],
                      [[c["name"], c["batch_size"], c["runner_examples_per_s"], c["limit_examples_per_s"],
                        c["ratio"], c.get("per_step_examples_per_s"), c.get("chunked_over_whole"),
                        c.get("chunk_call_cost_ms"), _percent(c.get("run_chunk_cost"))]
                       for c in results["cases"]])
    if "data_parallel" in results:
        dp = results["data_parallel"]
        where = "CPU devices forced on this machine's cores" if dp["forced_cpu_devices"] else dp["device_kind"]
        console.table(f"data parallel (examples/s, median epoch, {CHUNKS} chunks; {where})",
                      ["batch", "1 device", f"{dp['devices']} devices", "speedup"],
                      [[dp["batch_size"], dp["one_device_examples_per_s"], dp["data_parallel_examples_per_s"],
                        dp["speedup"]]])
    if "inference" in results:
        inference = results["inference"]
        batch = inference["throughput_batch"]
        console.table(f"predictions (inputs {'x'.join(map(str, inference['input_shape']))}; BCOO kept in: "
                      + "; ".join(f"batch {b}: {', '.join(layers) or 'no layer'}"
                                  for b, layers in inference["bcoo_layers"].items())
                      + f"; sparse net's weight sparsity {inference['weight_sparsity']:.2f})",
                      ["net", "checks", "parameters", "batch 1 p50 (us)", "batch 1 p99 (us)",
                       f"batch {batch} (examples/s)"],
                      [[r["name"], r.get("note") or r["guideline"], r.get("parameters"), r.get("latency_p50_us"),
                        r.get("latency_p99_us"), r.get("examples_per_s")] for r in inference["rows"]])
    labels = {"time_to_answer_mistake_s": f"time to answer a mistake, python -m runner {' '.join(MISTAKE)} (s)",
              "time_to_first_step_s": "time to first step (s)", "compile_time_s": "compile time (s)",
              "time_to_first_step_cached_s": "time to first step, compilation cached (s)",
              "compile_time_cached_s": "compile time, compilation cached (s)",
              "eval_examples_per_s": f"evaluation (examples/s, batch {EVAL_BATCH_SIZE})",
              "peak_host_memory_mib": "peak host memory, bench (MiB)",
              "runner_peak_host_memory_mib": "peak host memory, python -m runner (MiB)"}
    console.table("runner", ["measure", "value"], [[label, results[k]] for k, label in labels.items() if k in results])


def _percent(fraction: float | None) -> str | None:
    return None if fraction is None else f"{100 * fraction:.2f}%"


if __name__ == "__main__":
    main()
