"""A stride-1 convolution whose kernel gradient is itself written as a plain convolution.

Inside a `lax.scan` (the compiled epoch), XLA on CPU leaves the default kernel-gradient convolution in a slow
generic form, about 100x slower than the same convolution at top level; written as a convolution in the
canonical channel-last layout (batch and channels swapped by transposes), it compiles to the fast kernel.
The values are the same on every device; only the program differs.
"""

from __future__ import annotations

import functools

import jax
from jax import lax


def _dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
    spatial = tuple(range(1, ndim - 1))
    return lax.ConvDimensionNumbers((0, ndim - 1) + spatial, (ndim - 1, ndim - 2) + tuple(range(ndim - 2)),
                                    (0, ndim - 1) + spatial)


def _plain(x, w, padding):
    return lax.conv_general_dilated(x, w, (1,) * (x.ndim - 2), padding, dimension_numbers=_dimension_numbers(x.ndim))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x: jax.Array, w: jax.Array, padding: tuple[tuple[int, int], ...]) -> jax.Array:
    """Channel-last stride-1 convolution: x (N, *S, C), w (*K, C, O), explicit (low, high) padding per axis."""
    return _plain(x, w, padding)


def _conv_fwd(x, w, padding):
    return _plain(x, w, padding), (x, w)


def _conv_bwd(padding, residuals, g):
    x, w = residuals
    dx = jax.vjp(lambda x_: _plain(x_, w, padding), x)[1](g)[0]
    # dW[k, c, o] = sum_{n, s} xpad[n, s + k, c] g[n, s, o]: a convolution of x with channels as its batch and
    # the batch as its features, by g as the kernel (batch as input features).
    n = x.ndim
    spatial = tuple(range(1, n - 1))
    dw = _plain(x.transpose((n - 1,) + spatial + (0,)), g.transpose(spatial + (0, n - 1)), padding)
    return dx, dw.transpose(spatial + (0, n - 1))


conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """Drop-in for `lax.conv_general_dilated` as flax's nn.Conv calls it; `conv` where it applies."""
    simple = (all(s == 1 for s in window_strides) and all(d == 1 for d in (lhs_dilation or ()))
              and all(d == 1 for d in (rhs_dilation or ())) and feature_group_count == 1 and not kwargs
              and precision is None and dimension_numbers == _dimension_numbers(lhs.ndim))
    if not simple:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding)
    return conv(lhs, rhs, tuple(tuple(int(p) for p in pair) for pair in padding))
