"""Run-dir files are never half-written: atomic whole files, line-flushed JSON lines, torn lines skipped."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest

from runner.rundir.outputs import append_jsonl, read_jsonl, rewrite_jsonl, write_json


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


def test_written_files_get_the_umask_mode_not_the_temp_files_0600(tmp_path):
    mask = os.umask(0o022)
    try:
        import importlib

        import runner.rundir.outputs as outputs

        importlib.reload(outputs)  # FILE_MODE is read from the umask at import
        outputs.write_json(tmp_path / "summary.json", {"a": 1})
    finally:
        os.umask(mask)
        importlib.reload(outputs)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644
