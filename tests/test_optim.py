"""Tests for runner/training/optim.py: the chain clip -> optimizer(lr = schedule) -> regularizer transform.

Optimizers are built from their conf/optimizer/*.yaml files through `build_optimizer` /
`build_parts`, as a run builds them, and checked against the update rules written out by hand.
"""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from runner.config.compose import CONF_DIR
from runner.errors import UserError
from runner.training.build import build_parts, build_schedule, instantiate
from runner.training.optim import build_optimizer
from tests.conftest import compose_config

# The module's built nets and compiled programs are shared by its tests (cached per process): one worker runs them all.
pytestmark = pytest.mark.xdist_group("optim_module")

STEPS_PER_EPOCH = 10
OPTIMIZERS = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))


def _has_momentum(name: str) -> bool:
    """Whether the optimizer's YAML sets a momentum coefficient (b1 for the Adam family)."""
    node = yaml.safe_load((CONF_DIR / "optimizer" / f"{name}.yaml").read_text())
    return bool(node.get("b1") or node.get("momentum"))


CLIP_CHOICES = sorted(p.stem for p in (CONF_DIR / "clip").glob("*.yaml"))


def clip_overrides(clip: str, threshold: float = 1.0) -> list[str]:
    """`clip=<mode>` and its threshold (max_delta for value, max_norm for the norms)."""
    key = {"none": None, "value": "max_delta"}.get(clip, "max_norm")
    return [f"clip={clip}"] + ([f"clip.{key}={threshold}"] if key else [])


def optimizer(*overrides: str, cfg=None) -> tuple[optax.GradientTransformation, object]:
    """The optimizer chain and its config (composed from `overrides`, or `cfg`), built as a run builds them (no
    regularizer transform)."""
    cfg = compose_config(*overrides) if cfg is None else cfg
    schedule = build_schedule(cfg, STEPS_PER_EPOCH)
    return build_optimizer(cfg.optimizer, schedule, instantiate(cfg.clip, "clip")), cfg


@functools.cache
def composed(*overrides: str):
    """compose_config, once per set of overrides (~0.1 s each, most of a table's case): the cases only read it."""
    return compose_config(*overrides)


def with_clip(cfg, clip: str, threshold: float = 1.0):
    """`cfg` as composed with `clip_overrides(clip, threshold)` added: its clip node replaced by that of their own
    composition, as no other group's node depends on the clip choice (checked below). A table over optimizers x clip
    modes then composes each optimizer once and each clip mode once."""
    cfg = copy.deepcopy(cfg)
    cfg.clip = composed(*clip_overrides(clip, threshold)).clip
    return cfg


@pytest.mark.parametrize("clip", CLIP_CHOICES)
def test_a_clip_choice_changes_the_clip_node_alone(clip):
    overrides = ["optimizer=momentum", "optimizer.learning_rate=100", "regularizer=[max_norm]"]
    assert with_clip(composed(*overrides), clip, 2.0) == compose_config(*overrides, *clip_overrides(clip, 2.0))


def run(opt: optax.GradientTransformation, params, grad_fn, steps: int):
    """Params after each of `steps` updates, and the optimizer states after each."""
    state = opt.init(params)
    trajectory, states = [], []
    for _ in range(steps):
        updates, state = opt.update(grad_fn(params), state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(params)
        states.append(state)
    return trajectory, states


# A quadratic bowl f(w) = 1/2 sum(a * w^2), gradient a * w; steep along the second axis.
CURVATURE = np.array([1.0, 20.0, 5.0])
W0 = np.array([1.0, -2.0, 0.5])


def quadratic_grad(params):
    return {"w": jnp.asarray(CURVATURE, jnp.float32) * params["w"]}


def sgd_by_hand(lr, mu, nesterov, steps):
    """SGD with momentum: m = mu*m + g; w -= lr*m, or w -= lr*(mu*m + g) with Nesterov."""
    w, m, out = W0.copy(), np.zeros_like(W0), []
    for _ in range(steps):
        g = CURVATURE * w
        m = mu * m + g
        w = w - lr * (mu * m + g if nesterov else m)
        out.append(w)
    return out


@pytest.mark.parametrize("name, nesterov", [("momentum", False), ("nesterov", True)])
def test_momentum_and_nesterov_follow_their_update_rules(name, nesterov):
    opt, cfg = optimizer(f"optimizer={name}")
    trajectory, _ = run(opt, {"w": jnp.asarray(W0, jnp.float32)}, quadratic_grad, 3)
    expected = sgd_by_hand(cfg.optimizer.learning_rate, cfg.optimizer.momentum, nesterov, 3)
    for got, want in zip(trajectory, expected):
        np.testing.assert_allclose(got["w"], want, rtol=1e-5)


def test_nesterov_differs_from_momentum_from_the_first_step():
    (momentum, _), (nesterov, _) = optimizer("optimizer=momentum"), optimizer("optimizer=nesterov")
    params = {"w": jnp.asarray(W0, jnp.float32)}
    for got_m, got_n in zip(run(momentum, params, quadratic_grad, 3)[0], run(nesterov, params, quadratic_grad, 3)[0]):
        assert np.abs(np.asarray(got_m["w"]) - np.asarray(got_n["w"])).max() > 1e-3


# Clipping.

PARAMS = {"dense": {"kernel": jnp.full((3, 2), 0.5), "bias": jnp.zeros(2)}}
HUGE = {"dense": {"kernel": jnp.array([[3e6, -1e6], [2e6, 0.0], [-4e6, 1e6]]), "bias": jnp.array([5e5, -2e6])}}


@pytest.mark.parametrize("clip", CLIP_CHOICES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_chains_with_every_clip_mode(name, clip):
    opt, _ = optimizer(cfg=with_clip(composed(f"optimizer={name}"), clip, 1.0))
    trajectory, _ = run(opt, PARAMS, lambda p: HUGE, 2)
    leaves = jax.tree.leaves(trajectory[-1])
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    assert any(not np.allclose(x, y) for x, y in zip(leaves, jax.tree.leaves(PARAMS)))


def _clipped_by_hand(clip: str, threshold: float):
    grads = jax.tree.map(np.asarray, HUGE)
    if clip == "value":
        return jax.tree.map(lambda g: np.clip(g, -threshold, threshold), grads)
    if clip == "norm":  # each tensor to its own norm
        return jax.tree.map(lambda g: g * threshold / max(np.linalg.norm(g), threshold), grads)
    total = np.sqrt(sum(np.sum(g**2) for g in jax.tree.leaves(grads)))
    return jax.tree.map(lambda g: g * threshold / max(total, threshold), grads)


@pytest.mark.parametrize("clip", [c for c in CLIP_CHOICES if c != "none"])
def test_clipping_acts_on_the_raw_gradient_before_the_optimizer(clip):
    # sgd's step is -lr * clip(g); clipping after sgd would give -clip(lr * g), 1/lr times larger here.
    threshold = 2.0
    opt, cfg = optimizer("optimizer=sgd", *clip_overrides(clip, threshold))
    updates, _ = opt.update(HUGE, opt.init(PARAMS), PARAMS)
    expected = jax.tree.map(lambda g: -cfg.optimizer.learning_rate * g, _clipped_by_hand(clip, threshold))
    for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_clip_by_value_gives_sgd_a_step_of_lr_times_threshold_against_the_gradient_sign():
    opt, cfg = optimizer("optimizer=sgd", *clip_overrides("value", 0.5))
    updates, _ = opt.update(HUGE, opt.init(PARAMS), PARAMS)
    sign = np.sign(np.asarray(HUGE["dense"]["bias"]))
    np.testing.assert_allclose(updates["dense"]["bias"], -cfg.optimizer.learning_rate * 0.5 * sign, rtol=1e-6)


def test_clipping_feeds_the_momentum_the_clipped_gradient():
    opt, cfg = optimizer("optimizer=momentum", *clip_overrides("value", 1.0))
    lr, mu = cfg.optimizer.learning_rate, cfg.optimizer.momentum
    trajectory, _ = run(opt, {"w": jnp.zeros(2)}, lambda p: {"w": jnp.array([100.0, -0.5])}, 2)
    # m1 = g1, m2 = mu*m1 + g2 with g = clip(g) = [1, -0.5]: w2 = -lr*(1 + 1 + mu)*g.
    np.testing.assert_allclose(trajectory[-1]["w"], -lr * (2 + mu) * np.array([1.0, -0.5]), rtol=1e-6)


# One-cycle momentum.

def _hyperparam(state, name: str) -> float:
    """The value inject_hyperparams recorded for `name`, wherever it sits in the chain's state."""
    return float(optax.tree.get(state, "hyperparams")[name])


@pytest.mark.parametrize("clip", ["none", "global_norm"])
@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if _has_momentum(n)])
def test_one_cycle_drives_the_optimizers_momentum_and_rate_at_every_step(name, clip):
    steps = 2 * STEPS_PER_EPOCH
    cfg = compose_config(f"optimizer={name}", "schedule=one_cycle", "trainer.epochs=2", *clip_overrides(clip))
    schedule = build_schedule(cfg, STEPS_PER_EPOCH)
    opt = build_parts(cfg, num_classes=10, steps_per_epoch=STEPS_PER_EPOCH).optimizer
    key = "b1" if "b1" in cfg.optimizer else "momentum"
    _, states = run(opt, PARAMS, lambda p: jax.tree.map(jnp.ones_like, p), steps)
    # The k-th update (k = 0, 1, ...) uses the schedules' values at step k.
    momenta = [_hyperparam(s, key) for s in states]
    rates = [_hyperparam(s, "learning_rate") for s in states]
    np.testing.assert_allclose(momenta, [float(schedule.momentum_at(k)) for k in range(steps)], rtol=1e-6)
    np.testing.assert_allclose(rates, [float(schedule.learning_rate_at(k)) for k in range(steps)], rtol=1e-6)
    peak = round(cfg.schedule.warmup_fraction * steps)
    assert int(np.argmin(momenta)) == peak and momenta[peak] == pytest.approx(cfg.schedule.min_momentum)
    assert momenta[0] == pytest.approx(cfg.schedule.max_momentum)


def test_one_cycle_momentum_is_the_one_sgd_applies():
    cfg = compose_config("optimizer=momentum", "schedule=one_cycle", "trainer.epochs=1")
    schedule = build_schedule(cfg, STEPS_PER_EPOCH)
    opt = build_optimizer(cfg.optimizer, schedule)
    trajectory, _ = run(opt, {"w": jnp.asarray(W0, jnp.float32)}, quadratic_grad, 4)
    w, m = W0.copy(), np.zeros_like(W0)
    for t, got in enumerate(trajectory):  # m = mu(t)*m + g; w -= lr(t)*m
        g = CURVATURE * w
        m = float(schedule.momentum_at(t)) * m + g
        w = w - float(schedule.learning_rate_at(t)) * m
        np.testing.assert_allclose(got["w"], w, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if not _has_momentum(n)])
def test_one_cycle_with_an_optimizer_without_momentum_is_a_user_error(name):
    cfg = compose_config(f"optimizer={name}", "schedule=one_cycle")
    with pytest.raises(UserError, match="momentum"):
        build_parts(cfg, num_classes=10, steps_per_epoch=STEPS_PER_EPOCH)


def test_one_cycle_with_plain_sgd_is_a_user_error():
    assert "sgd" in OPTIMIZERS and not _has_momentum("sgd")
    with pytest.raises(UserError, match="optimizer=momentum"):
        build_parts(compose_config("optimizer=sgd", "schedule=one_cycle"), 10, STEPS_PER_EPOCH)


# Max-norm: the regularizer's transform ends the chain.

# A net of two hidden layers under max-norm, and a rate that makes any optimizer's first step huge.
MAX_NORM = ("optimizer.learning_rate=100", "regularizer=[max_norm]", "normalization=none", "model.depth=2",
            "model.width=16")


@functools.cache
def params_and_huge_grads():
    """Params of the MAX_NORM net's shapes (its init traced, not run: the shapes are every optimizer's) and
    gradients 50 times a standard normal, drawn by NumPy: op by op, JAX's draws and initializers compile a program
    per shape (seconds)."""
    model = build_parts(composed("optimizer=sgd", *MAX_NORM), 10, STEPS_PER_EPOCH).model
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x)["params"],
                            jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32))
    rng = np.random.default_rng(0)
    return tuple(jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), jnp.float32), shapes)
                 for scale in (0.1, 50.0))


@pytest.mark.parametrize("clip", ["none", "value"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_max_norm_holds_after_a_huge_step_of_every_optimizer(name, clip):
    cfg = with_clip(composed(f"optimizer={name}", *MAX_NORM), clip)
    max_value = cfg.regularizer.max_norm.max_value
    parts = build_parts(cfg, num_classes=10, steps_per_epoch=STEPS_PER_EPOCH)
    params, grads = params_and_huge_grads()
    opt = parts.optimizer
    updates, _ = opt.update(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    moved = False
    for layer in new:
        column_norms = np.linalg.norm(np.asarray(new[layer]["kernel"]), axis=0)
        assert column_norms.max() <= max_value * (1 + 1e-5), layer
        moved |= not np.allclose(new[layer]["bias"], params[layer]["bias"])
    assert moved  # biases are not projected: the step itself was huge


def test_max_norm_without_the_transform_would_be_violated():
    # The same huge sgd step without max_norm leaves columns far outside the ball: the test above can fail.
    cfg = compose_config("optimizer=sgd", *MAX_NORM, "regularizer=[]")
    params, grads = params_and_huge_grads()
    opt = build_parts(cfg, num_classes=10, steps_per_epoch=STEPS_PER_EPOCH).optimizer
    new = optax.apply_updates(params, opt.update(grads, opt.init(params), params)[0])
    assert np.linalg.norm(np.asarray(new["dense_0"]["kernel"]), axis=0).max() > 10.0
