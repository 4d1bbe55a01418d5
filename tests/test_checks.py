"""The one checker: range strings mean what they say, and every declared parameter of every conf file is
refused out of range by the pre-run check, in one line naming the key."""

from __future__ import annotations

import math

import pytest
import yaml

from runner.cli.preflight import preflight
from runner.cli.relations import validate
from runner.config.checks import SPEC_KEY, describe, parse_spec
from runner.config.compose import CONF_DIR
from runner.errors import UserError
from tests.conftest import compose_shared


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


# Groups chosen as a list (regularizer=[l2,dropout], logger=[jsonl,csv]): each choice's file puts its keys under
# its own name (`# @package <group>.<choice>`).
LIST_GROUPS = {group for entry in yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]
               if isinstance(entry, dict) for group, choice in entry.items() if isinstance(choice, list)}


def _declared() -> list[tuple[str, str]]:
    """(select, override): every declared parameter of every conf file with each of its bad values, file by file."""
    cases = []
    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        if path.parent.name == "experiment":
            continue
        text = yaml.safe_load(path.read_text()) or {}
        group, choice = path.parent.name, path.stem
        prefix = f"{group}.{choice}" if group in LIST_GROUPS else group
        select = f"{group}=[{choice}]" if group in LIST_GROUPS else f"{group}={choice}"
        nodes = [(prefix, text)] + [(f"{prefix}.{k}", v) for k, v in text.items()
                                    if isinstance(v, dict) and SPEC_KEY in v]
        for where, node in nodes:
            for key, spec in (node.get(SPEC_KEY) or {}).items():
                plus = "" if key in node else "+"
                cases += [(select, f"{plus}{where}.{key}={value}") for value in _bad_values(spec)]
    return cases


def _kind(override: str) -> str:
    """The kind of an override's value: a finite number (just outside a bound, whichever), a list of one, or the
    text itself (abc, null, inf, nan, [inf], '', maybe, ...)."""
    value = override.split("=", 1)[1]
    try:
        number = math.isfinite(float(value.strip("[]")))
    except ValueError:
        number = False
    return ("[a number]" if value.startswith("[") else "a number") if number else value


def _nested(select: str, override: str) -> bool:
    """Whether the override's key sits in a node nested in its file's (normalization.layer, dataset.source)."""
    return override.split("=", 1)[0].count(".") > (2 if "[" in select else 1)


def _first(cases: list, by) -> list:
    """The first case of each value of `by`, in the cases' order."""
    return list({by(case): case for case in reversed(cases)}.values())[::-1]


DECLARED = _declared()
# Choices that need one value from the user before anything else can be checked.
REQUIRED = {"dataset=tfds": ["dataset.name=kmnist"], "dataset=npz": ["dataset.path=/data/my.npz"]}
# The whole pre-run check (~0.3 s: two compositions) for the first bad value of each group, of a node nested in one
# (normalization.layer, dataset.source), of each kind of value and of a key the file leaves out (`+`): it composes
# and reaches the range check alike for every other; then every bad value of every key of every file, on the config
# preflight composes for it, by the check preflight runs on that config (validate), each file composed once.
THROUGH_PREFLIGHT = list(dict.fromkeys(_first(DECLARED, lambda c: (c[0].split("=")[0], _nested(*c)))
                                        + _first(DECLARED, lambda c: _kind(c[1]))
                                        + _first(DECLARED, lambda c: c[1].startswith("+"))))


@pytest.mark.parametrize("select, override", [pytest.param(*c, id=c[1]) for c in THROUGH_PREFLIGHT])
def test_every_declared_parameter_out_of_range_is_refused_before_anything_runs(select, override, tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as refused:
        preflight([select, *REQUIRED.get(select, []), override])
    key = override.split("=", 1)[0].lstrip("+")
    assert str(refused.value).startswith(key), (override, str(refused.value))
    assert "\n" not in str(refused.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("select", list(dict.fromkeys(select for select, _ in DECLARED)))
def test_every_declared_parameter_out_of_range_is_refused_by_the_range_check(select):
    """Each bad value of each key of the file, on the config preflight composes for it (compose_shared: the file's
    choice composed once, the value applied as Hydra applies it), refused by validate in one line naming the key."""
    wrong = []
    for override in [o for s, o in DECLARED if s == select]:
        key = override.split("=", 1)[0].lstrip("+")
        try:
            validate(compose_shared(select, *REQUIRED.get(select, []), override))
            wrong.append(f"{override}: accepted")
        except UserError as e:
            if not str(e).startswith(key) or "\n" in str(e):
                wrong.append(f"{override}: {e}")
    assert not wrong, "\n".join(wrong)


def _schema_declared() -> list[tuple[str, str]]:
    """(override, spec): every field of the schemas that declares a range, with each of its bad values."""
    import dataclasses

    from runner.config.compose import DatasetConfig, EarlyStoppingConfig, TrainerConfig

    return [(f"{prefix}.{field.name}={value}", field.metadata["valid"])
            for prefix, schema in (("dataset", DatasetConfig), ("trainer", TrainerConfig),
                                   ("trainer.early_stopping", EarlyStoppingConfig))
            for field in dataclasses.fields(schema) if "valid" in field.metadata
            for value in _bad_values(field.metadata["valid"])]


# Each value through the whole pre-run check (a value that does not convert to the field's type is refused where
# Hydra applies it: compose_shared, with which preflight composes).
SCHEMA_DECLARED = _schema_declared()


@pytest.mark.parametrize("override, spec", [pytest.param(*c, id=c[0]) for c in SCHEMA_DECLARED])
def test_every_schema_field_out_of_range_is_refused_before_anything_runs(override, spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as refused:
        preflight([override])
    assert str(refused.value).startswith(override.split("=", 1)[0]), (override, str(refused.value))
    assert describe(spec) in str(refused.value)  # what is valid, whether OmegaConf or the range check refused it
    assert "\n" not in str(refused.value)
    assert not any(tmp_path.iterdir())


# Presets that set a regularizer's own settings (regularizer.<name>: ...): emptied from the command line, those
# settings have no choice left to build.
SETTING_REGULARIZERS = {p.stem: sorted((yaml.safe_load(p.read_text()) or {}).get("regularizer") or {})
                        for p in sorted((CONF_DIR / "experiment").glob("*.yaml"))}


@pytest.mark.parametrize("preset", [name for name, settings in SETTING_REGULARIZERS.items() if settings])
def test_settings_of_a_choice_not_chosen_are_refused_in_one_line_naming_them(preset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as refused:
        preflight([f"+experiment={preset}", "regularizer=[]"])
    message = str(refused.value)
    named = message.split(":")[0].removeprefix("regularizer.")
    assert named in SETTING_REGULARIZERS[preset] and "which is not chosen (regularizer=[])" in message, message
    assert "\n" not in message and not any(tmp_path.iterdir())
    validate(compose_shared(f"+experiment={preset}"))  # chosen, the same settings build
