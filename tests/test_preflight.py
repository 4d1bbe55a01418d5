"""What preflight answers a key the chosen config lacks: what to type instead (runner/preflight.py)."""

from __future__ import annotations

import pytest

from runner.errors import UserError
from runner.preflight import preflight


@pytest.mark.parametrize("args,line", [
    (["optimizer=sgd", "optimizer.momentum=0.9"],
     "optimizer.momentum: optimizer=sgd does not set it; it is an optional argument there: "
     "add it with +optimizer.momentum=0.9"),
    (["optimizer.momentum=0.9"],
     "optimizer.momentum: optimizer=adam has no momentum; optimizer=momentum, optimizer=nesterov set it: choose one"),
    (["schedule.decay_every=5"], "schedule.decay_every: schedule=constant has no decay_every; schedule=exponential"),
    (["schedule.rate=5"], "schedule.rate: no such key; schedule=constant takes no settings"),
    (["trainer.epoch=3"], "trainer.epoch: no such key; did you mean epochs?; valid keys under trainer: "),
    (["model.depht=3"], "model.depht: no such key; did you mean depth?; valid keys under model: channels, depth"),
])
def test_a_key_the_choice_lacks_is_answered_with_what_to_type(args, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as refused:
        preflight(args)
    assert str(refused.value).startswith(line), refused.value
    assert not any(tmp_path.iterdir())


def test_the_suggested_plus_form_is_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preflight(["optimizer=sgd", "+optimizer.momentum=0.9", f"hydra.run.dir={tmp_path / 'run'}"])
