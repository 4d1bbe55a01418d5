"""The names of a net's layers: the one scheme that every part reading a parameter tree by layer uses.

The net (runner/net/model.py) names its weight layers by position from the input up, `conv_<i>` then `dense_<i>` (i
counts every hidden weight layer: a CNN's first dense layer after two convs is `dense_2`); hidden layer i feeds its
block, `block_<i>` (normalization, activation, dropout); `head` gives the logits. So "the lowest K layers" is a
prefix of the hidden layers in this order (transfer, stages, pretraining), and a layer's block follows from its
name (freezing, grafting, folding batch norm, diagnostics). The same names key model.safetensors
(runner/net/weights.py: `dense_0.kernel`, `block_0.norm.scale`, `head.bias`).
"""

from __future__ import annotations

import re
from typing import Iterable

HEAD = "head"
KINDS = ("conv", "dense")  # the hidden weight layers' kinds, in the order a net stacks them
HIDDEN = re.compile(r"(conv|dense)_(\d+)")
BLOCK = re.compile(r"block_(\d+)")


def hidden_layer(kind: str, index: int) -> str:
    """Hidden weight layer `index` (from 0 at the input) of a kind: `dense_3`."""
    return f"{kind}_{index}"


def block(index: int) -> str:
    """The block that hidden layer `index` feeds: `block_3`."""
    return f"block_{index}"


def index_of(layer: str) -> int:
    """A hidden layer's position from the input: `dense_3` -> 3."""
    return int(layer.rsplit("_", 1)[1])


def kind_of(layer: str) -> str:
    """A hidden layer's kind: `dense_3` -> `dense`."""
    return layer.rsplit("_", 1)[0]


def block_of(layer: str) -> str:
    """The block a hidden layer feeds: `dense_3` -> `block_3`."""
    return block(index_of(layer))


def hidden_layers(names: Iterable[str]) -> list[str]:
    """The hidden weight layers among `names` (a parameter tree's keys), from the input up."""
    return sorted((n for n in set(names) if HIDDEN.fullmatch(n)), key=index_of)


def weight_layers(names: Iterable[str]) -> list[str]:
    """The layers among `names` that hold a connection weight, from the input up: the hidden ones, then the head."""
    names = set(names)
    return hidden_layers(names) + ([HEAD] if HEAD in names else [])
