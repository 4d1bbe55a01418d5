"""Run-dir files are never half-written: atomic whole files, line-flushed JSON lines, torn lines skipped."""

from __future__ import annotations

import json
import math

import pytest

from runner.outputs import append_jsonl, read_jsonl, remove_new_dir, rewrite_jsonl, write_json


def test_write_json_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2, "nan": math.nan})
    assert json.loads(path.read_text()) == {"a": 2, "nan": None}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_reader_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1})
    append_jsonl(path, {"epoch": 2})
    with open(path, "a") as f:
        f.write('{"epoch": 3, "loss": 0.')  # a crash mid-write
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    rewrite_jsonl(path, read_jsonl(path))
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'


def test_remove_new_dir_removes_empty_parents_up_to_the_root(tmp_path):
    run_dir = tmp_path / "outputs" / "2026-01-01" / "12-00-00"
    (run_dir / ".hydra").mkdir(parents=True)
    keep = tmp_path / "other"
    keep.mkdir()
    remove_new_dir(run_dir, stop_at=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_remove_new_dir_keeps_parents_with_other_runs(tmp_path):
    day = tmp_path / "outputs" / "2026-01-01"
    (day / "old").mkdir(parents=True)
    (day / "new").mkdir()
    remove_new_dir(day / "new", stop_at=tmp_path)
    assert [p.name for p in day.iterdir()] == ["old"]
