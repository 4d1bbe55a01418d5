"""Evidence over seeds for runner.report.tables: seed groups, Student-t intervals, paired differences, baselines.

Pure functions of overrides and numbers; no files, no plotting. The definitions the report states:

- A run's *config* is its overrides without `trainer.seed`; runs whose configs are the same set of overrides form
  a *group* (`-m trainer.seed=range(0,5) activation=relu,elu` gives 2 groups of 5).
- Only runs that finished (COUNTED_STATUSES) enter statistics; the others are counted and named by status.
- `mean_interval`: mean, sample standard deviation (ddof=1) and the 95% confidence interval for the mean by
  Student's t, mean ± t_{0.975, n-1} · s / √n, clipped to the metric's range (`BOUNDS`: accuracies [0, 1], losses
  ≥ 0); with one value there is no sd and no interval. Clipping costs no coverage: the true mean lies in the range,
  so it is inside the clipped interval exactly when it is inside the t-interval (`INTERVAL_METHOD` says this in
  the report).
- `prediction_interval`: where one more run of the same config lands, with 95% probability: mean ± t_{0.975, n−1} ·
  s · √(1 + 1/n) (the mean's uncertainty, s²/n, plus one run's own, s²), clipped as `mean_interval`. The interval
  to hold a single run against (a book's printed number, one seed of someone else's); the mean's is √(n + 1)
  times narrower.
- `paired_difference`: over the seeds both configs have, d_s = value_s − baseline_s, then `mean_interval(d)`,
  clipped to the range of a difference (accuracies [−1, 1]).
- A baseline is given as overrides separated by whitespace or by commas outside brackets and quotes
  (`"activation=relu optimizer=sgd"`, `"activation=relu,optimizer=sgd"`; `regularizer=[l2,dropout]` stays one);
  it is the one group whose config holds all of them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

# Student's t quantile, t_{p, df} = stdtrit(df, p): what scipy.stats.t.ppf computes, without importing scipy.stats
# (0.9 s; scipy.special: 0.1 s), which every multirun's report would pay at its end.
from scipy.special import stdtrit

from runner.errors import UserError

SEED_KEY = "trainer.seed"
CONFIDENCE = 0.95
# A diverged run's numbers are its config's outcome (a learning rate too high for some seeds); failed,
# interrupted and still-running runs stopped for reasons that say nothing about the config.
COUNTED_STATUSES = ("completed", "early_stopped", "diverged")
NOT_SET = "(default)"  # a varying key's value in a config that does not override it
# The range of each metric the report gives intervals for: a t-interval is symmetric, so near a bound it reaches past
# it (accuracies 0.78 and 0.87 over two seeds gave [0.297, 1.356]); its part outside the range is cut off.
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "best_val_accuracy": (0.0, 1.0), "test_accuracy": (0.0, 1.0), "val_accuracy": (0.0, 1.0),
    "train_accuracy": (0.0, 1.0), "train_loss": (0.0, None), "val_loss": (0.0, None), "test_loss": (0.0, None)}
INTERVAL_METHOD = ("Student-t interval of the mean, mean ± t(0.975, n−1)·sd/√n, clipped to the metric's range "
                   "(accuracies [0, 1], losses ≥ 0; differences of accuracies [−1, 1])")


class BaselineError(UserError):
    """A baseline that names no group, several, or is not written as overrides."""


@dataclass(frozen=True)
class Interval:
    """Mean of n values with its sample sd and confidence interval (sd, low, high are None when n < 2).

    `low` and `high` are clipped to the range given to `mean_interval`; `half_width` is t · sd / √n, unclipped
    (for `prediction_interval`, t · sd · √(1 + 1/n))."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None
    half_width: float | None = None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def bounds_of(metric: str) -> tuple[float | None, float | None]:
    """The range a metric's values (and so their mean) lie in; (None, None) for one without a known range."""
    return BOUNDS.get(metric, (None, None))


def difference_bounds(metric: str) -> tuple[float | None, float | None]:
    """The range of a difference of two values of a metric: [low − high, high − low] when both ends are known."""
    low, high = bounds_of(metric)
    return (None, None) if low is None or high is None else (low - high, high - low)


def mean_interval(values: Iterable[float], confidence: float = CONFIDENCE,
                  bounds: tuple[float | None, float | None] = (None, None)) -> Interval | None:
    """Mean ± t_{(1+confidence)/2, n-1} · s/√n of the finite values, clipped to `bounds` (low, high; None: open);
    None when there are none."""
    return _t_interval(values, confidence, bounds, lambda n: 1 / math.sqrt(n))


def prediction_interval(values: Iterable[float], confidence: float = CONFIDENCE,
                        bounds: tuple[float | None, float | None] = (None, None)) -> Interval | None:
    """Where one new run falls: mean ± t_{(1+confidence)/2, n-1} · s · √(1 + 1/n) of the finite values, clipped to
    `bounds`; None when there are none, no interval from one value."""
    return _t_interval(values, confidence, bounds, lambda n: math.sqrt(1 + 1 / n))


def _t_interval(values: Iterable[float], confidence: float, bounds: tuple[float | None, float | None],
                sd_scale: Callable[[int], float]) -> Interval | None:
    """Mean ± t_{(1+confidence)/2, n-1} · s · sd_scale(n), clipped to `bounds`."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return None
    mean = math.fsum(xs) / n
    if n == 1:
        return Interval(1, mean, None, None, None)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stdtrit(n - 1, (1 + confidence) / 2)) * sd * sd_scale(n)
    low, high = bounds
    return Interval(n, mean, sd, mean - half if low is None else max(mean - half, low),
                    mean + half if high is None else min(mean + half, high), half)


def paired_difference(values: Mapping[str, float], baseline: Mapping[str, float],
                      bounds: tuple[float | None, float | None] = (None, None)) -> tuple[list[str], Interval | None]:
    """The seeds in both (sorted) and the interval of values[seed] − baseline[seed] over them, clipped to `bounds`
    (`difference_bounds(metric)`)."""
    seeds = sort_seeds(s for s in values if s in baseline)
    return seeds, mean_interval((values[s] - baseline[s] for s in seeds), bounds=bounds)


def per_seed(pairs: Iterable[tuple[str | None, float | None]]) -> dict[str, float]:
    """{seed: value} from (seed, value) pairs, skipping unknown seeds and non-finite values; a seed run twice
    (the same config and seed in two run dirs) counts once, as the mean of its runs, so pairs stay one per seed."""
    found: dict[str, list[float]] = {}
    for seed, value in pairs:
        if seed is not None and value is not None and math.isfinite(value):
            found.setdefault(seed, []).append(float(value))
    return {seed: math.fsum(vs) / len(vs) for seed, vs in found.items()}


def sort_seeds(seeds: Iterable[str]) -> list[str]:
    return sorted(seeds, key=lambda s: (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s))


def per_epoch(curves: Sequence[Sequence[tuple[int, float | None]]],
              bounds: tuple[float | None, float | None] = (None, None)) -> list[tuple[int, Interval]]:
    """The interval at each epoch over the curves that reached it (with a finite value, clipped to `bounds`), in
    epoch order."""
    at: dict[int, list[float]] = {}
    for curve in curves:
        for epoch, value in curve:
            at.setdefault(epoch, []).append(math.nan if value is None else value)
    intervals = ((epoch, mean_interval(at[epoch], bounds=bounds)) for epoch in sorted(at))
    return [(epoch, interval) for epoch, interval in intervals if interval is not None]


# ---- overrides: groups, seeds, baselines, varying keys ----

def override_key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def override_value(override: str) -> str:
    return override.partition("=")[2]


def short_override(override: str) -> str:
    """`+experiment/vanishing_gradients=elu_he` -> `vanishing_gradients=elu_he`: a variant by its own name."""
    key, sep, value = override.lstrip("+~").partition("=")
    return key.rsplit("/", 1)[-1] + sep + value


def config_of(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides that choose the config: all but the seed."""
    return tuple(o for o in overrides if override_key(o) != SEED_KEY)


def seed_of(overrides: Sequence[str], summary: Mapping) -> str | None:
    """The run's seed as typed (`trainer.seed=3`), else as summary.json recorded it, else unknown (None)."""
    typed = [override_value(o) for o in overrides if override_key(o) == SEED_KEY]
    seed = typed[-1] if typed else summary.get("seed")
    return None if seed is None else str(seed)


def group_indices(configs: Sequence[Sequence[str]]) -> list[list[int]]:
    """Indices of equal configs (compared as sets of overrides), groups in order of first appearance."""
    groups: dict[frozenset, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(frozenset(config), []).append(i)
    return list(groups.values())


def exclusion_note(statuses: Sequence[str | None]) -> str:
    """`1 failed, 2 running`: the runs left out of statistics, by status."""
    left_out: dict[str, int] = {}
    for status in statuses:
        if status not in COUNTED_STATUSES:
            left_out[status or "unknown"] = left_out.get(status or "unknown", 0) + 1
    return ", ".join(f"{count} {status}" for status, count in sorted(left_out.items()))


def split_overrides(text: str) -> list[str]:
    """`"a=1 b=[x,y],c=2"` -> `["a=1", "b=[x,y]", "c=2"]`: whitespace and commas outside brackets and quotes."""
    parts, current, depth, quote = [], "", 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif depth == 0 and (char == "," or char.isspace()):
            parts.append(current)
            current = ""
            continue
        current += char
    return [p for p in parts + [current] if p]


def override_matches(wanted: str, override: str) -> bool:
    """`wanted` names `override`: the same key (a group path may be given by its last part, as labels show it,
    leading +/~ ignored) and the same value (as text, or as numbers: `1e-3` is `0.001`)."""
    key, value = override_key(wanted), override_value(wanted)
    have_key, have_value = override_key(override), override_value(override)
    if key != have_key and key != have_key.rsplit("/", 1)[-1]:
        return False
    return value == have_value or _same_number(value, have_value)


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def find_baseline(text: str, configs: Sequence[Sequence[str]], labels: Sequence[str]) -> int:
    """The index of the one config holding every override of `text`; BaselineError naming the groups otherwise."""
    wanted = split_overrides(text)
    available = "; ".join(labels)
    malformed = [w for w in wanted if not re.fullmatch(r"[+~]*[\w./@-]+=.*", w)]
    if not wanted or malformed:
        raise BaselineError(f"baseline {text!r}: {'not an override: ' + malformed[0] if malformed else 'empty'}; "
                            f"give key=value overrides of one group (several: space- or comma-separated); "
                            f"groups: {available}")
    hits = [i for i, config in enumerate(configs) if all(any(override_matches(w, o) for o in config) for w in wanted)]
    if len(hits) != 1:
        found = "matches no group" if not hits else f"matches {len(hits)} groups ({'; '.join(labels[i] for i in hits)})"
        raise BaselineError(f"baseline {text!r} {found}; it must match exactly one; groups: {available}")
    return hits[0]


def varying_keys(configs: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """{key: its value in each config} for every override key whose value is not the same in all configs
    (NOT_SET where a config leaves the key at its default), keys in the order first seen."""
    keys = list(dict.fromkeys(override_key(o) for config in configs for o in config))
    table = {key: [next((override_value(o) for o in config if override_key(o) == key), NOT_SET) for config in configs]
             for key in keys}
    return {key: values for key, values in table.items() if len(set(values)) > 1}


def is_numeric(values: Iterable[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


def isolation_axes(varying: Mapping[str, Sequence[str]]) -> tuple[str, list[str]]:
    """The key for the x axis and the keys that make the lines. x: a numeric key if any (a numeric axis shows a
    trend), then the one with the most distinct values, then by name; lines: every other varying key, by name
    (one line per combination of their values)."""
    def rank(key: str) -> tuple:
        return (not is_numeric(varying[key]), -len(set(varying[key])), key)
    x = min(varying, key=rank)
    return x, sorted(k for k in varying if k != x)
