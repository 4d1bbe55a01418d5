"""Flax MLP and small CNN, built from the chosen initializer, activation, normalization and dropout.

Layers are named `dense_<i>` / `conv_<i>` from the input upward and `head` for the output layer, so
diagnostics can order them by depth. Activation, normalization and dropout arrive as objects built from
the config: a plain function (jax.nn.elu) is applied as is; a Flax module (PReLU, BatchNorm, Dropout) is
a template copied into each layer, so each layer has its own parameters.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn

from runner.conv import conv_general_dilated

Initializer = Callable[..., Any]


class HiddenBlock(nn.Module):
    """Normalization and activation (in the configured order), then dropout, after one weight layer."""

    activation: Any
    normalization: nn.Module | None
    norm_position: str
    dropout: nn.Module | None

    @nn.compact
    def __call__(self, x, train: bool, mc_dropout: bool = False):
        if self.normalization is not None and self.norm_position == "pre":
            x = self._normalize(x, train)
        x = self._activate(x, train)
        if self.normalization is not None and self.norm_position == "post":
            x = self._normalize(x, train)
        if self.dropout is not None:
            x = self.dropout.copy(name="dropout")(x, deterministic=not (train or mc_dropout))
        return x

    def _normalize(self, x, train):
        norm = self.normalization.copy(name="norm")
        if isinstance(norm, nn.BatchNorm):  # the only one with separate training and evaluation statistics
            return norm(x, use_running_average=not train)
        return norm(x)

    def _activate(self, x, train):
        if isinstance(self.activation, nn.Module):
            return self.activation.copy(name="act")(x, train=train)
        return self.activation(x)


class _Net(nn.Module):
    """Fields shared by the MLP and the CNN."""

    num_classes: int
    depth: int
    width: int
    kernel_init: Initializer
    activation: Any
    normalization: nn.Module | None = None
    norm_position: str = "pre"
    hidden_dropout: nn.Module | None = None
    input_dropout: nn.Module | None = None

    def _block(self, name: str) -> HiddenBlock:
        return HiddenBlock(self.activation, self.normalization, self.norm_position, self.hidden_dropout, name=name)

    def _inputs(self, x, train, mc_dropout):
        if self.input_dropout is not None:
            x = self.input_dropout.copy(name="input_dropout")(x, deterministic=not (train or mc_dropout))
        return x

    def _dense_stack(self, x, train, mc_dropout, first: int = 0):
        x = x.reshape((x.shape[0], -1))
        for i in range(first, first + self.depth):
            x = nn.Dense(self.width, kernel_init=self.kernel_init, name=f"dense_{i}")(x)
            x = self._block(f"block_{i}")(x, train, mc_dropout)
        return nn.Dense(self.num_classes, kernel_init=self.kernel_init, name="head")(x)


class MLP(_Net):
    """`depth` hidden dense layers of `width` units, then a linear head producing logits."""

    @nn.compact
    def __call__(self, x, train: bool = False, mc_dropout: bool = False):
        return self._dense_stack(self._inputs(x, train, mc_dropout), train, mc_dropout)


class CNN(_Net):
    """A 3x3 convolution + 2x pooling per entry of `channels`, then `depth` dense layers and the head.

    Works on 2-D images (N, H, W, C) and 1-D signals (N, L, C): kernels follow the input's rank.
    """

    channels: Sequence[int] = (32, 64)

    @nn.compact
    def __call__(self, x, train: bool = False, mc_dropout: bool = False):
        x = self._inputs(x, train, mc_dropout)
        spatial = x.ndim - 2
        for i, features in enumerate(self.channels):
            x = nn.Conv(features, (3,) * spatial, kernel_init=self.kernel_init, name=f"conv_{i}",
                        conv_general_dilated=conv_general_dilated)(x)
            x = self._block(f"block_{i}")(x, train, mc_dropout)
            if all(size >= 2 for size in x.shape[1:-1]):
                x = nn.max_pool(x, (2,) * spatial, strides=(2,) * spatial)
        return self._dense_stack(x, train, mc_dropout, first=len(self.channels))

