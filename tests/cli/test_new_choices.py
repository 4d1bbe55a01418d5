"""A new choice of every kind is one conf file (plus one function only where the libraries lack it),
found through Hydra's own `--config-dir` and run from the real command line."""

from __future__ import annotations

import textwrap

import yaml

from tests.conftest import read_summary

USER_MODULE = '''
"""What a user writes only where optax, jax.nn and flax lack it."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from runner.data.splits import TrainTest
from runner.techniques.regularizers import Regularizer
from runner.techniques.schedules import Schedule


def tiny_penalty(strength=1e-5):
    return Regularizer(penalty=lambda params: strength * sum(jnp.sum(w ** 2) for w in
                                                             [p["kernel"] for p in params.values() if "kernel" in p]))


def halving(learning_rate, steps_per_epoch, total_steps, every=2):
    del total_steps
    return Schedule(lambda t: learning_rate * 0.5 ** (t // (every * steps_per_epoch)))


def blobs(data_dir=None, n=400):
    del data_dir
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, 6)) + 3 * np.eye(3, 6)[y]).astype(np.float32)[..., None]
    return TrainTest(x[:300], y[:300].astype(np.int32), x[300:], y[300:].astype(np.int32), 3)


class OneLayer(nn.Module):
    num_classes: int
    kernel_init: object
    activation: object
    normalization: object = None
    norm_position: str = "pre"
    hidden_dropout: object = None
    input_dropout: object = None
    width: int = 32
    hidden_layers = ("dense_0",)

    @nn.compact
    def __call__(self, x, train=False, dropout=None, frozen=frozenset()):
        x = x.reshape((x.shape[0], -1))
        x = self.activation(nn.Dense(self.width, kernel_init=self.kernel_init, name="dense_0")(x))
        return nn.Dense(self.num_classes, kernel_init=self.kernel_init, name="head")(x)
'''

CONF = {
    "optimizer/lion.yaml": "_target_: optax.lion\nlearning_rate: 0.001\n_valid_: {learning_rate: '> 0'}\n",
    "activation/celu.yaml": "_target_: jax.nn.celu\n_partial_: true\nalpha: 1.0\n_valid_: {alpha: '> 0'}\n",
    "initializer/orthogonal.yaml": "_target_: jax.nn.initializers.orthogonal\nscale: 1.0\n_valid_: {scale: '> 0'}\n",
    "regularizer/tiny.yaml": "# @package regularizer.tiny\n_target_: usermod.tiny_penalty\nstrength: 1.0e-5\n"
                             "_valid_: {strength: '>= 0'}\n",
    "schedule/halving.yaml": "_target_: usermod.halving\nevery: 2\n_valid_: {every: 'int >= 1'}\n",
    "clip/block_rms.yaml": "_target_: optax.clip_by_block_rms\nthreshold: 1.0\n_valid_: {threshold: '> 0'}\n",
    "model/one_layer.yaml": "_target_: usermod.OneLayer\nwidth: 32\n_valid_: {width: 'int >= 1'}\n",
    "dataset/blobs.yaml": "defaults:\n  - /dataset_schema@_here_\nname: blobs\nsource:\n  _target_: usermod.blobs\n"
                          "  _partial_: true\n  n: 400\n  _valid_: {n: 'int >= 10'}\n",
    "stages/warm_up_lower.yaml": "_target_: runner.training.stages.freeze_lower\nfrozen_layers: 1\nfrozen_epochs: 1\n"
                                 "_valid_: {frozen_layers: 'int >= 0', frozen_epochs: 'int >= 1'}\n",
}
CHOICES = ["optimizer=lion", "activation=celu", "initializer=orthogonal", "regularizer=[tiny]", "schedule=halving",
           "clip=block_rms", "model=one_layer", "dataset=blobs", "stages=warm_up_lower"]


def test_a_new_choice_of_every_kind_is_one_conf_file_and_runs(cli):
    conf = cli.cwd / "myconf"
    for name, text in CONF.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    (cli.cwd / "usermod.py").write_text(textwrap.dedent(USER_MODULE))
    cli.env["PYTHONPATH"] = str(cli.cwd)
    result = cli("-cd", str(conf), *CHOICES, "normalization=none", "trainer.epochs=3", "hydra.run.dir=outputs/new")
    assert result.returncode == 0, result.stderr
    run_dir = cli.cwd / "outputs" / "new"
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["test_accuracy"] > 0.5
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["optimizer"]["_target_"] == "optax.lion" and saved["model"]["_target_"] == "usermod.OneLayer"
    assert saved["dataset"]["source"]["_target_"] == "usermod.blobs"
    # And the new choices' declared ranges are checked like the built-in ones.
    refused = cli("-cd", str(conf), "optimizer=lion", "optimizer.learning_rate=-1")
    assert refused.returncode == 2 and "optimizer.learning_rate" in refused.stderr
