"""The net: a body of named hidden layers and a head, built from the chosen initializer, activation,
normalization and dropout.

The body is `conv_<i>` layers (a 3x3 convolution + 2x pooling per entry of `channels`; 1-D or 2-D following
the inputs), then `dense_<i>` layers of `widths` units, numbered on from the convolutions; each weight layer
feeds `block_<i>` (normalization, activation, dropout); `head` gives the logits. Those names make "the lowest
K layers" a prefix of the parameter tree, which is what stages, freezing and reuse cut at (the scheme, and its
readers' functions: runner/net/layers.py). `Model` is the contract the rest of the runner relies on.

The head's kernel starts from `head_init` where the config chooses one (Keras's output layer is Glorot-uniform
whatever its hidden layers use), else from the hidden layers' initializer.
Activation, normalization and dropout arrive as objects built from the config: a plain function
(jax.nn.elu) is applied as is; a Flax module (PReLU, BatchNorm, Dropout) is a template copied into each
layer, so each layer has its own parameters. Two switches per call, not one: `train` updates batch
statistics (and draws RReLU's slopes) and `dropout` draws masks; layers named in `frozen` run in inference mode either way.
Diagnostics read each weight layer's output (`preact`) and each activation's (`activated`) through `sow`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import flax.linen as nn

from runner.net.conv import conv_general_dilated
from runner.net.layers import HEAD, block, hidden_layer

Initializer = Callable[..., Any]


@runtime_checkable
class Model(Protocol):
    """What the runner asks of a net: `Net` below, or a `model=` conf file of one's own that builds a Flax module
    keeping this contract. The train step, the loop, evaluation, diagnostics, stages and transfer touch a net only
    through it (greedy pretraining and batch-norm folding also read Net's own fields, and refuse other nets).

    - `init` / `apply` (a Flax module's) call `__call__(x, train, dropout, frozen, start, stop)`: logits; with
      `stop` (and `start`), the features of hidden layers [start, stop) instead (transfer.cache); hidden layers
      named in `frozen` run in inference mode; `train` updates batch statistics, `dropout` draws masks (default:
      `train`; True at evaluation is MC dropout).
    - `hidden_layers`: the hidden weight layers' names, from the input up, in runner/net/layers.py's scheme; hidden
      layer i feeds `block_<i>`, and `head` gives the logits. Transfer, stages and freezing cut at these names.
    - `activation`: the hidden layers' activation (diagnostics measure its saturation).
    - For per-layer diagnostics it sows, under `intermediates`: `preact` per hidden weight layer, `head_preact`,
      and `activated` in each block.
    """

    num_classes: int
    activation: Any

    @property
    def hidden_layers(self) -> tuple[str, ...]: ...

    def init(self, rngs: Any, *args: Any, **kwargs: Any) -> Any: ...

    def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any: ...


class HiddenBlock(nn.Module):
    """Normalization and activation (in the configured order), then dropout, after one weight layer."""

    activation: Any
    normalization: nn.Module | None
    norm_position: str
    dropout: nn.Module | None

    @nn.compact
    def __call__(self, x, train: bool, drop: bool):
        """`train`: batch statistics update and random activations (RReLU) draw; `drop`: dropout is on."""
        if self.normalization is not None and self.norm_position == "pre":
            x = self._normalize(x, train)
        if isinstance(self.activation, nn.Module):
            x = self.activation.copy(name="act")(x, train=train)
        else:
            x = self.activation(x)
        self.sow("intermediates", "activated", x)
        if self.normalization is not None and self.norm_position == "post":
            x = self._normalize(x, train)
        if self.dropout is not None:
            x = self.dropout.copy(name="dropout")(x, deterministic=not drop)
        return x

    def _normalize(self, x, train):
        norm = self.normalization.copy(name="norm")
        if isinstance(norm, nn.BatchNorm):  # the only one with separate training and evaluation statistics
            return norm(x, use_running_average=not train)
        return norm(x)


class Net(nn.Module):
    """`channels` conv layers, then dense layers of `widths` units (default: `depth` of `width`), then the head: the
    runner's `Model`."""

    num_classes: int
    kernel_init: Initializer
    activation: Any
    depth: int = 3
    width: int = 100
    widths: Sequence[int] | None = None  # per-layer widths, e.g. (300, 100); overrides depth and width
    channels: Sequence[int] = ()
    normalization: nn.Module | None = None
    norm_position: str = "pre"
    hidden_dropout: nn.Module | None = None
    input_dropout: nn.Module | None = None
    head_init: Initializer | None = None  # the head's kernel initializer (model.head_init); None: kernel_init

    @property
    def dense_widths(self) -> tuple[int, ...]:
        return tuple(self.widths) if self.widths is not None else (self.width,) * self.depth

    @property
    def hidden_layers(self) -> tuple[str, ...]:
        """The body's weight layers, from the input up."""
        convs = len(self.channels)
        return (tuple(hidden_layer("conv", i) for i in range(convs))
                + tuple(hidden_layer("dense", convs + i) for i in range(len(self.dense_widths))))

    @nn.compact
    def __call__(self, x, train: bool = False, dropout: bool | None = None, frozen: frozenset = frozenset(),
                 start: int = 0, stop: int | None = None):
        """Logits of inputs `x`; or, with `start`/`stop`, the features of hidden layers [start, stop).

        `dropout` defaults to `train` (True at evaluation is MC dropout). With `start` = K, `x` is the output
        of hidden layer K-1; with `stop` = K (the top one too), the output of hidden layer K-1 is returned
        instead of logits.
        """
        dropout = train if dropout is None else dropout
        names = self.hidden_layers
        features = stop is not None  # asked for a cut (even the top one): no head
        stop = len(names) if stop is None else stop
        if start == 0 and self.input_dropout is not None and (not names or names[0] not in frozen):
            x = self.input_dropout.copy(name="input_dropout")(x, deterministic=not dropout)
        for i in range(start, stop):
            live = names[i] not in frozen
            x = self._layer(i, x)
            self.sow("intermediates", "preact", x)
            x = HiddenBlock(self.activation, self.normalization, self.norm_position, self.hidden_dropout,
                            name=block(i))(x, train=train and live, drop=dropout and live)
            if i < len(self.channels) and all(size >= 2 for size in x.shape[1:-1]):
                x = nn.max_pool(x, (2,) * (x.ndim - 2), strides=(2,) * (x.ndim - 2))
        if features:
            return x
        head_init = self.kernel_init if self.head_init is None else self.head_init
        logits = nn.Dense(self.num_classes, kernel_init=head_init, name=HEAD)(x.reshape((x.shape[0], -1)))
        self.sow("intermediates", "head_preact", logits)
        return logits

    def _layer(self, i: int, x):
        if i < len(self.channels):
            return nn.Conv(self.channels[i], (3,) * (x.ndim - 2), kernel_init=self.kernel_init,
                           name=hidden_layer("conv", i),
                           conv_general_dilated=conv_general_dilated)(x)
        width = self.dense_widths[i - len(self.channels)]
        return nn.Dense(width, kernel_init=self.kernel_init, name=hidden_layer("dense", i))(
            x.reshape((x.shape[0], -1)))
