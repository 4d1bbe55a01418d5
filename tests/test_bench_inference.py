"""The bench's run-time cost section (runner/bench/inference.py) at its smoke size: every row measured, the sparse
net's sparsity measured after training, BCOO kept only where a layer's product was faster. No timing is asserted."""

from __future__ import annotations

import pytest

from runner.bench.inference import NETS


# The section as `python -m runner.bench --smoke` wrote it: the session's one smoke run (tests/conftest.py).
@pytest.mark.xdist_group("bench_smoke")
def test_the_smoke_section_measures_every_net(bench_smoke):
    results = bench_smoke[1]["inference"]

    rows = {row["name"]: row for row in results["rows"]}
    assert list(rows) == list(NETS)
    for name, row in rows.items():
        if "note" in row:  # sparse_bcoo where BCOO paid in no layer: said so instead of timed again
            assert name == "sparse_bcoo" and not any(results["bcoo_layers"].values())
            continue
        assert 0 < row["latency_p50_us"] <= row["latency_p99_us"] and row["examples_per_s"] > 0
    assert rows["default_folded"]["parameters"] < rows["default"]["parameters"]  # the norm's 4 vectors per layer gone
    assert results["folded_layers"] == ["dense_0", "dense_1"]
    assert 0 < results["weight_sparsity"] < 1
    for batch, layers in results["bcoo_layers"].items():
        faster = {t["layer"] for t in results["bcoo_timings"]
                  if str(t["batch"]) == batch and t["bcoo_us"] < t["dense_us"]}
        assert set(layers) == faster
