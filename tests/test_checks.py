"""The one checker: range strings mean what they say, and every declared parameter of every conf file is
refused out of range by the pre-run check, in one line naming the key."""

from __future__ import annotations

import math

import pytest
import yaml

from runner.checks import SPEC_KEY, describe, parse_spec
from runner.config import CONF_DIR
from runner.errors import UserError
from runner.preflight import preflight


@pytest.mark.parametrize("spec, accepted, refused", [
    ("> 0", [1e-9, 3, 0.5], [0, -1, math.inf, math.nan, None, "fast", True]),
    (">= 0", [0, 0.0, 2], [-1e-9, math.inf]),
    ("[0, 1)", [0, 0.5, 0.999], [1, 1.0, -0.1]),
    ("(0, 1]", [1, 1e-6], [0, 1.1]),
    ("int >= 1", [1, 7], [0, 1.5, "3"]),
    ("int [0, 4294967295]", [0, 4294967295], [-1, 4294967296]),
    ("null or int >= 1", [None, 3], [0, "x"]),
    ("each > 0", [[0.1, 2], []], [[0.1, -0.1], 0.1, None]),
    ("bool", [True, False], [1, "yes", None]),
    ("one of pre, post", ["pre", "post"], ["mid", None, 1]),
    ("null or node", [None, {"_target_": "x"}], [{"a": 1}, 3]),
])
def test_a_range_string_accepts_exactly_the_values_it_describes(spec, accepted, refused):
    check = parse_spec(spec)
    assert all(check(v) for v in accepted), spec
    assert not any(check(v) for v in refused), spec


def test_a_range_reads_as_words_in_the_message():
    assert describe("int >= 1") == "an integer >= 1"
    assert describe("[0, 1)") == "a number in [0, 1)"
    assert describe("null or each > 0") == "null or a list, each a number > 0"


def _bad_values(spec: str) -> list[str]:
    """Override values outside a range: a number just outside a bound (first), a word, null, infinity, NaN."""
    if spec.startswith("null or "):
        return [v for v in _bad_values(spec[len("null or "):]) if v != "null"]
    if spec.startswith("auto or "):
        return _bad_values(spec[len("auto or "):])  # none of them is the word auto
    if spec.startswith("each "):
        return ["[" + v + "]" for v in _bad_values(spec[len("each "):]) if v not in ("null",)]
    if spec in ("bool",):
        return ["maybe", "null"]
    if spec.startswith("one of "):
        return ["nonsense", "null"]
    if spec == "node":
        return ["3"]
    if spec == "str":
        return ["null", "''"]
    body = spec.removeprefix("int ")
    if body[0] in "[(":
        low, high = (float(x) for x in body[1:-1].split(","))
        outside = [str(low - 1 if body[0] == "[" else low), str(high + 1 if body[-1] == "]" else high)]
    else:
        op, limit = body.split()
        outside = [str(float(limit) - 1 if op.startswith(">") else float(limit) + 1)]
    return outside + ["abc", "null", "inf", "nan"]


def _cases(values: list[str], make_param, sampled: bool = True):
    """The first (most telling) bad value of a sampled key runs in `make test`; the rest with the slow tests."""
    for i, value in enumerate(values):
        yield make_param(value, () if i == 0 and sampled else pytest.mark.slow)


# Groups chosen as a list (regularizer=[l2,dropout], logger=[jsonl,csv]): each choice's file puts its keys under
# its own name (`# @package <group>.<choice>`).
LIST_GROUPS = {group for entry in yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]
               if isinstance(entry, dict) for group, choice in entry.items() if isinstance(choice, list)}


def _declared():
    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        if path.parent.name == "experiment":
            continue
        text = yaml.safe_load(path.read_text()) or {}
        group, choice = path.parent.name, path.stem
        prefix = f"{group}.{choice}" if group in LIST_GROUPS else group
        select = f"{group}=[{choice}]" if group in LIST_GROUPS else f"{group}={choice}"
        nodes = [(prefix, text)] + [(f"{prefix}.{k}", v) for k, v in text.items()
                                    if isinstance(v, dict) and SPEC_KEY in v]
        keys = [(where, node, key, spec) for where, node in nodes for key, spec in (node.get(SPEC_KEY) or {}).items()]
        for i, (where, node, key, spec) in enumerate(keys):  # make test: the first key of each file
            plus = "" if key in node else "+"
            yield from _cases(_bad_values(spec), lambda value, marks: pytest.param(
                select, f"{plus}{where}.{key}={value}", id=f"{where}.{key}={value}", marks=marks), sampled=i == 0)


# Choices that need one value from the user before anything else can be checked.
REQUIRED = {"dataset=tfds": ["dataset.name=kmnist"], "dataset=npz": ["dataset.path=/data/my.npz"]}


@pytest.mark.parametrize("select, override", list(_declared()))
def test_every_declared_parameter_out_of_range_is_refused_before_anything_runs(select, override, tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as refused:
        preflight([select, *REQUIRED.get(select, []), override])
    key = override.split("=", 1)[0].lstrip("+")
    assert str(refused.value).startswith(key), (override, str(refused.value))
    assert "\n" not in str(refused.value)
    assert not any(tmp_path.iterdir())


def _schema_declared():
    import dataclasses

    from runner.config import DatasetConfig, EarlyStoppingConfig, TrainerConfig

    for prefix, schema in (("dataset", DatasetConfig), ("trainer", TrainerConfig),
                           ("trainer.early_stopping", EarlyStoppingConfig)):
        for field in dataclasses.fields(schema):
            if "valid" in field.metadata:
                spec = field.metadata["valid"]
                yield from _cases(_bad_values(spec), lambda value, marks: pytest.param(
                    f"{prefix}.{field.name}={value}", spec, id=f"{prefix}.{field.name}={value}", marks=marks))


@pytest.mark.parametrize("override, spec", list(_schema_declared()))
def test_every_schema_field_out_of_range_is_refused_before_anything_runs(override, spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as refused:
        preflight([override])
    assert str(refused.value).startswith(override.split("=", 1)[0]), (override, str(refused.value))
    assert describe(spec) in str(refused.value)  # what is valid, whether OmegaConf or the range check refused it
    assert "\n" not in str(refused.value)
    assert not any(tmp_path.iterdir())
