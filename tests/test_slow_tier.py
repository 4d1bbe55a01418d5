"""The slow tier's rule (tests/conftest.py): a test is slow when its measured setup and call reach the threshold,
and so is every test of an xdist group whose shared fixture alone does; a new measurement replaces only the tests
it ran; the costliest units run first."""

from __future__ import annotations

from tests.conftest import costliest_first, is_slow, merged_durations, slow_groups

MEASURED = {
    "t.py::cheap": {"setup": 0.5, "call": 2.0, "group": None},
    "t.py::costly": {"setup": 1.0, "call": 7.5, "group": None},
    "t.py::first_of_group": {"setup": 9.0, "call": 1.0, "group": "shared"},  # the group's fixture ran here
    "t.py::other_of_group": {"setup": 0.0, "call": 1.5, "group": "shared"},
}


def test_a_test_is_slow_from_the_threshold_on_and_only_then():
    assert not is_slow("t.py::cheap", None, MEASURED, threshold=8.0)
    assert is_slow("t.py::costly", None, MEASURED, threshold=8.0)
    assert not is_slow("t.py::costly", None, MEASURED, threshold=8.6)


def test_every_test_of_a_group_whose_fixture_is_slow_is_slow_however_cheap_itself():
    assert is_slow("t.py::other_of_group@shared", "shared", MEASURED, threshold=8.0)
    assert not is_slow("t.py::other_of_group@shared", "shared", MEASURED, threshold=9.5)
    assert is_slow("t.py::first_of_group@shared", "shared", MEASURED, threshold=9.5)  # its own 10 s


def test_the_groups_worked_out_once_give_what_each_test_would_work_out():
    assert slow_groups(MEASURED, threshold=8.0) == {"shared"} and slow_groups(MEASURED, threshold=9.5) == set()
    for node_id in MEASURED:
        for threshold in (8.0, 9.5):
            groups = slow_groups(MEASURED, threshold)
            group = MEASURED[node_id]["group"]
            assert (is_slow(node_id, group, MEASURED, threshold, groups=groups)
                    == is_slow(node_id, group, MEASURED, threshold))


def test_an_unmeasured_test_runs_in_make_test():
    assert not is_slow("t.py::new_test", None, MEASURED, threshold=8.0)


def test_a_measurement_replaces_the_tests_it_ran_and_keeps_the_others():
    ran = {"t.py::costly": {"setup": 0.2, "call": 3.123, "group": None},  # made cheaper
           "t.py::cheap": {"setup": 0.1, "call": 0.4, "group": None}}  # under a second: no longer listed
    merged = merged_durations(MEASURED, ran)
    assert merged["t.py::costly"] == {"setup": 0.2, "call": 3.12, "group": None}
    assert "t.py::cheap" not in merged
    assert merged["t.py::first_of_group"] == MEASURED["t.py::first_of_group"]
    assert list(merged) == sorted(merged)


class Item:
    """What costliest_first reads of a pytest item: its node id (xdist's `@group` suffix on a grouped one)."""

    def __init__(self, nodeid: str, group: str | None = None):
        self.nodeid, self.group = nodeid + (f"@{group}" if group else ""), group

    def get_closest_marker(self, name: str):
        return type("Mark", (), {"args": (self.group,)}) if name == "xdist_group" and self.group else None


def test_the_costliest_unit_runs_first_and_a_units_items_stay_together_in_their_order():
    measured = {"a.py::one": {"setup": 0.0, "call": 2.0, "group": None},
                "a.py::two": {"setup": 0.0, "call": 2.0, "group": None},  # a.py: 4 s in all
                "b.py::big": {"setup": 0.0, "call": 5.0, "group": None},  # b.py: 5 s
                "c.py::x": {"setup": 3.0, "call": 0.5, "group": "g"},  # group g spans c.py and d.py: 4.5 s
                "d.py::y": {"setup": 0.0, "call": 1.0, "group": "g"}}
    items = [Item("a.py::one"), Item("a.py::cheap"), Item("a.py::two"), Item("b.py::small"), Item("b.py::big"),
             Item("c.py::x", "g"), Item("c.py::z"), Item("d.py::y", "g")]
    order = [item.nodeid for item in costliest_first(items, measured)]
    assert order == ["b.py::small", "b.py::big", "c.py::x@g", "d.py::y@g", "a.py::one", "a.py::cheap", "a.py::two",
                     "c.py::z"]
