"""The layer-name scheme (runner/net/layers.py) is the one the net builds: every reader of a parameter tree by layer
finds the net's layers, their order and their blocks through it."""

from __future__ import annotations

import jax
import pytest

from runner.net.layers import HEAD, block_of, hidden_layers, index_of, kind_of, weight_layers
from runner.training.build import build_parts
from runner.training.train import create_train_state
from tests.conftest import compose_config


@pytest.mark.parametrize("overrides, kinds", [
    (("model.depth=3",), ["dense"] * 3),
    (("model=cnn", "model.channels=[4,8]", "model.widths=[16]"), ["conv", "conv", "dense"]),
])
def test_the_nets_parameter_tree_is_named_by_the_scheme(overrides, kinds):
    cfg = compose_config("normalization=batch_norm", *overrides)
    parts = build_parts(cfg, num_classes=3, steps_per_epoch=1)
    shape = (2, 8, 8, 1)
    state = create_train_state(jax.random.PRNGKey(0), parts, jax.numpy.zeros(shape))
    names = list(state.params)
    hidden = hidden_layers(names)
    assert hidden == list(parts.model.hidden_layers)  # the net's own list, from the input up
    assert [kind_of(n) for n in hidden] == kinds and [index_of(n) for n in hidden] == list(range(len(kinds)))
    assert weight_layers(names) == hidden + [HEAD]
    assert {block_of(n) for n in hidden} <= set(state.batch_stats)  # each hidden layer's block holds its norm
    assert set(names) == set(hidden) | {block_of(n) for n in hidden} | {HEAD}


def test_ordering_is_by_position_not_by_text():
    assert hidden_layers(["dense_10", "dense_2", "head", "block_2", "conv_0"]) == ["conv_0", "dense_2", "dense_10"]
    assert weight_layers(["head", "dense_1", "dense_0"]) == ["dense_0", "dense_1", "head"]


def test_the_built_net_keeps_the_model_contract():
    """runner/net/model.py's Model: what the rest of the runner asks of a net, here of the one the config builds."""
    import jax.numpy as jnp

    from runner.net.model import Model

    cfg = compose_config("model.depth=2", "model.width=8")
    parts = build_parts(cfg, num_classes=3, steps_per_epoch=1)
    assert isinstance(parts.model, Model)
    x = jnp.ones((2, 8, 8, 1))
    variables = parts.model.init(jax.random.PRNGKey(0), x)
    assert parts.model.apply(variables, x).shape == (2, 3)
    features = parts.model.apply(variables, x, stop=1)  # the cut transfer.cache uses: hidden layer 0's output
    assert features.shape == (2, 8)
    assert parts.model.apply(variables, features, start=1).shape == (2, 3)
