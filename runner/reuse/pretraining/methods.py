"""The pretraining methods of the `pretraining` group (runner/reuse/pretraining/__init__.py) and what they share."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from omegaconf import DictConfig, OmegaConf

from runner.console import Console
from runner.data import load_splits
from runner.errors import UserError
from runner.net.layers import block_of, hidden_layers, kind_of
from runner.reuse.pretraining import none
from runner.reuse.transfer import Source, SourceLayer
from runner.rundir.outputs import append_jsonl, rewrite_jsonl
from runner.scale.distributed import is_writer
from runner.techniques.regularizers import Regularizer
from runner.techniques.schedules import Schedule
from runner.training.build import build_parts, build_regularizer, instantiate
from runner.training.handlers import EpochEnd
from runner.training.loop import Loop
from runner.training.stages import Stage
from runner.training.train import Parts, TrainState, Update, create_train_state

LOG_FILE = "pretraining.jsonl"
# Pretraining draws its own random numbers: the same seed as the run, folded with a constant, so its initial
# weights and batch orders are not the fine-tuning run's.
_KEY_SALT = 0x70726574


@dataclasses.dataclass
class Context:
    """What every pretraining function is called with: the run's config, its dir and its console."""

    cfg: DictConfig
    run_dir: Path
    console: Console
    method: str  # the pretraining function's name (`autoencoder`), for messages and pretraining.jsonl
    _logging: bool = False  # whether pretraining.jsonl was started by this run

    def record(self, record: dict) -> None:
        """One line of pretraining.jsonl; the first replaces the file (a resumed run pretrains again, alike)."""
        if not is_writer():
            return
        if not self._logging:
            rewrite_jsonl(self.run_dir / LOG_FILE, [])
            self._logging = True
        append_jsonl(self.run_dir / LOG_FILE, record)

    @property
    def key(self) -> jax.Array:
        return jax.random.fold_in(jax.random.PRNGKey(self.cfg.trainer.seed), _KEY_SALT)


def pretraining_method(cfg: DictConfig) -> Any:
    """The pretraining the config chooses, built (a partial of one of the functions below); None for none."""
    node = cfg.get("pretraining")
    method = None if node is None else instantiate(node, "pretraining", _partial_=True)
    return None if method is None or method.func is none else method


def pretrain(cfg: DictConfig, run_dir: Path, console: Console) -> Source | None:
    """The source the run reuses, pretrained as `pretraining` says; None for pretraining=none."""
    method = pretraining_method(cfg)
    if method is None:
        return None
    context = Context(cfg, run_dir, console, method.func.__name__)
    if cfg.transfer.source:
        raise UserError(f"pretraining={context.method}: reuses its own pretrained layers, and transfer.source names "
                        "another net's; valid: one of them (pretraining=none, or transfer.source=null)")
    return method(context)


# Supervised pretraining and the generated-label task: the whole net, with the run's recipe.


def supervised(context: Context, classes: list[int], epochs: int = 10) -> Source:
    """The net trained on `classes` of the run's dataset (task A, every label), its hidden layers the source.

    The run's task B is `dataset.classes`, which must not share a class with task A. Task A's inputs are scaled
    by their own statistics, and so are task B's (the source's scaling), as for any transfer source.
    """
    cfg = context.cfg
    task_b = list(cfg.dataset.classes or [])
    if not task_b:
        raise UserError("pretraining=supervised: needs the run's task to be some classes, dataset.classes=[...], so "
                        "that pretraining.classes are others; valid: e.g. dataset.classes=[5,6,7,8,9] "
                        "pretraining.classes=[0,1,2,3,4]")
    shared = sorted(set(task_b) & set(classes))
    if shared:
        raise UserError(f"pretraining.classes: {list(classes)} shares class {shared[0]} with dataset.classes "
                        f"{task_b}; valid: classes of the dataset that the run's task does not have")
    # Task A: its classes with every training label; no validation split (its test examples stay untouched).
    dataset = OmegaConf.merge(cfg.dataset, {"classes": list(classes), "val_fraction": 0.0, "validation": "random",
                                            "train_subset": None, "labeled_examples": None})
    try:
        splits = load_splits(dataset, seed=cfg.trainer.seed)
    except UserError as error:  # keep_classes names the run's own key; here the classes are pretraining's
        message = str(error)
        if message.startswith("dataset.classes"):
            raise UserError("pretraining.classes" + message[len("dataset.classes"):]) from None
        raise
    context.console.info(f"pretraining=supervised: {len(splits.x_train)} examples of classes {list(classes)}")
    params, batch_stats = _train_body(context, splits.x_train, splits.y_train, splits.num_classes, epochs)
    return _source(context, params, batch_stats, splits.scaling)


def auxiliary(context: Context, epochs: int = 10) -> Source:
    """The net trained to tell which transformation of `generated_task` each training input went through."""
    cfg = context.cfg
    if build_regularizer(cfg).augment is not None:
        raise UserError("pretraining=auxiliary: regularizer augmentation flips, shifts and rotates the inputs, which "
                        "changes the generated labels; valid: a regularizer list without augmentation")
    splits = load_splits(cfg.dataset, seed=cfg.trainer.seed)
    x, y, views = generated_task(splits.all_train_inputs)
    context.console.info(f"pretraining=auxiliary: {len(x)} inputs, {views} transformations of "
                         f"{len(splits.all_train_inputs)} training inputs")
    params, batch_stats = _train_body(context, x, y, views, epochs)
    return _source(context, params, batch_stats, splits.scaling)


def generated_task(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(inputs, labels, how many labels): every input under each transformation, labelled by which.

    Square images (N, H, H, C): label r is a rotation by r * 90 degrees counter-clockwise (np.rot90 from H to W),
    r = 0..3 (Gidaris et al. 2018). Other images: 0 or 180 degrees. 1-D signals (N, L, C): as they are (0) or
    reversed in time (1). Inputs are grouped by label: all of label 0, then all of label 1, ...
    """
    if x.ndim == 4:
        turns = range(4) if x.shape[1] == x.shape[2] else (0, 2)
        views = [np.rot90(x, r, axes=(1, 2)) for r in turns]
    else:
        views = [x, x[:, ::-1]]
    labels = np.repeat(np.arange(len(views), dtype=np.int32), len(x))
    return np.ascontiguousarray(np.concatenate(views)), labels, len(views)


def _train_body(context: Context, x: np.ndarray, y: np.ndarray, num_classes: int,
                epochs: int) -> tuple[dict, dict]:
    """(params, batch_stats) of the run's net (with a head of `num_classes`) after `epochs` of the run's epoch."""
    cfg = OmegaConf.merge(context.cfg, {"trainer": {"epochs": epochs}})  # the schedule spans the pretraining
    batch_size = _batch_size(cfg, len(x), context.method)
    parts = build_parts(cfg, num_classes, len(x) // batch_size)
    init_key, data_key = jax.random.split(context.key)
    state = create_train_state(init_key, parts, jnp.asarray(x[:batch_size]))
    x, y = jax.device_put((x, y))
    log = _Log(context, "body")
    # The run's own loop and compiled epoch; its one handler writes pretraining.jsonl.
    outcome = Loop(parts, [Stage("pretraining", epochs)], batch_size, 0, x, y, data_key, [log], None).run(state, 0, 1)
    if outcome.status == "diverged":
        log.nonfinite(outcome.epoch + 1)
    log.done(epochs, "loss")
    return outcome.state.params, outcome.state.batch_stats


# Greedy layer-wise pretraining: each hidden layer on the outputs of the frozen ones below.


def autoencoder(context: Context, epochs: int = 10, learning_rate: float = 1e-3) -> Source:
    """Each dense layer an autoencoder on the outputs of the ones below, from the input up; the stack the source.

    Encoder: the layer and its block (normalization, activation; batch statistics updated, dropout off).
    Decoder: a dense layer from its output back to its input (linear), dropped afterwards. Loss: the mean
    squared error between the decoder's output and the layer's input, over batches of `trainer.batch_size`.
    """
    model, params, batch_stats, splits, layers = _greedy_start(context)
    body = _with_top_cut(model)
    x = splits.all_train_inputs
    optimizer = optax.adam(learning_rate)
    for k, name in enumerate(layers):
        block = block_of(name)
        key = jax.random.fold_in(context.key, k)
        features = int(np.prod(x.shape[1:]))  # the layer's input, flattened: what the decoder reconstructs
        decoder = {"kernel": model.kernel_init(key, (model.dense_widths[k], features), jnp.float32),
                   "bias": jnp.zeros(features, jnp.float32)}
        trainable = {name: params[name], **({block: params[block]} if block in params else {}), "decoder": decoder}
        stats = {block: batch_stats[block]} if block in batch_stats else {}
        state = TrainState.create(apply_fn=None, params=trainable, tx=optimizer, batch_stats=stats)
        state = train_layer(context, name, autoencoder_update(body, k), state, learning_rate, x, key, epochs,
                            "reconstruction loss")
        params = {**params, **{n: p for n, p in state.params.items() if n != "decoder"}}
        batch_stats = {**batch_stats, **state.batch_stats}
        variables = {"params": {n: params[n] for n in (name, block) if n in params}, "batch_stats": state.batch_stats}
        x = _batched(lambda v, xb, k=k: body.apply(v, xb, train=False, start=k, stop=k + 1), variables, x)
    return _source(context, params, batch_stats, splits.scaling, layers)


def autoencoder_update(body: Any, k: int) -> Update:
    """One step of layer k's autoencoder: the state's params are the layer, its block and the decoder, its
    batch_stats the block's; one step of its optimizer (Adam) on the mean squared reconstruction error."""
    def loss_fn(trainable, stats, batch, step_key):
        encoder = {n: p for n, p in trainable.items() if n != "decoder"}
        code, updates = body.apply({"params": encoder, "batch_stats": stats}, batch, train=True, dropout=False,
                                   start=k, stop=k + 1, mutable=["batch_stats"], rngs={"dropout": step_key})
        flat = batch.reshape(batch.shape[0], -1)
        reconstruction = code @ trainable["decoder"]["kernel"] + trainable["decoder"]["bias"]
        return jnp.mean((reconstruction - flat) ** 2), updates.get("batch_stats", {})

    def apply(state: TrainState, x: jax.Array, y: None, key: jax.Array):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.batch_stats, x, key)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state, batch_stats=stats)
        return state, {"loss": loss}, None

    return Update(apply)


class RBM(NamedTuple):
    """A restricted Boltzmann machine with sigmoid units: weights (visible, hidden) and both biases."""

    weights: jax.Array
    visible_bias: jax.Array
    hidden_bias: jax.Array


def cd_update(rbm: RBM, v0: jax.Array, uniforms: jax.Array, learning_rate: float) -> tuple[RBM, jax.Array]:
    """One contrastive-divergence update, CD-k with k = len(uniforms) (Hinton 2002; Hinton 2010, "A practical
    guide to training restricted Boltzmann machines", sections 3-4).

    p(h|v) = sigmoid(v W + c); p(v|h) = sigmoid(h W^T + b). From the data v0: h is sampled, h = [u < p(h|v)]
    with `uniforms[i]` (batch, hidden) at Gibbs step i; each reconstruction v_i = p(v|h) is a probability, not
    a sample (Hinton 2010, 3.2). After k steps, with p0 = p(h|v0), pk = p(h|vk):

        W += lr (v0^T p0 - vk^T pk) / batch,  b += lr mean(v0 - vk),  c += lr mean(p0 - pk).

    Returns the updated RBM and the squared reconstruction error of the first Gibbs step, mean((v0 - v1)^2).
    """
    w, b, c = rbm
    p0 = jax.nn.sigmoid(v0 @ w + c)
    p, v, first = p0, v0, None
    for u in uniforms:
        h = (u < p).astype(v0.dtype)
        v = jax.nn.sigmoid(h @ w.T + b)
        p = jax.nn.sigmoid(v @ w + c)
        first = v if first is None else first
    n = v0.shape[0]
    updated = RBM(w + learning_rate * (v0.T @ p0 - v.T @ p) / n,
                  b + learning_rate * jnp.mean(v0 - v, axis=0),
                  c + learning_rate * jnp.mean(p0 - p, axis=0))
    return updated, jnp.mean((v0 - first) ** 2)


def rbm(context: Context, epochs: int = 10, learning_rate: float = 0.1, k: int = 1) -> Source:
    """Each dense layer an RBM on the outputs of the ones below (CD-k, `cd_update`); the stack the source.

    The first RBM's visible units take the standardized inputs mapped to [0, 1] by a min-max per channel over the
    training inputs, v = (x - lo) / (hi - lo); that map is then folded into the first layer's weights and bias,
    so the grafted layer computes the same sigmoid(v W + c) from the standardized inputs the run trains on.
    Needs activation=sigmoid and normalization=none: an RBM layer is a weight layer and a sigmoid, nothing else.
    Weights start as the run's initializer draws them, hidden biases at 0, visible biases at log(p / (1 - p)) of
    the mean input p (Hinton 2010, 8.1); the visible biases are dropped afterwards.
    """
    cfg = context.cfg
    built = instantiate(cfg.activation, "activation")
    activation = getattr(built, "func", built)  # the function a conf file's partial calls
    if activation is not jax.nn.sigmoid:
        raise UserError(f"pretraining=rbm: needs activation=sigmoid (an RBM's hidden units are sigmoid), got "
                        f"{getattr(activation, '__name__', type(activation).__name__).lower()}")
    if cfg.normalization.layer is not None:
        layer = instantiate(cfg.normalization.layer, "normalization.layer")
        raise UserError(f"pretraining=rbm: needs normalization=none (an RBM layer is weights then a sigmoid), got a "
                        f"{type(layer).__name__} layer")
    model, params, batch_stats, splits, layers = _greedy_start(context)
    x = splits.all_train_inputs
    lo, scale = _min_max(x)
    channel = np.arange(int(np.prod(x.shape[1:]))) % x.shape[-1]  # each flattened input's channel
    v = (x.reshape(len(x), -1) - lo[channel]) / scale[channel]
    for index, name in enumerate(layers):
        key = jax.random.fold_in(context.key, index)
        mean = np.clip(v.mean(axis=0), 1e-3, 1 - 1e-3)
        machine = RBM(params[name]["kernel"], jnp.asarray(np.log(mean / (1 - mean)), jnp.float32),
                      params[name]["bias"])
        # CD-k is its own update, not a gradient step: the state's optimizer (the identity) is never applied.
        state = TrainState.create(apply_fn=None, params=machine, tx=optax.identity(), batch_stats={})
        machine = train_layer(context, name, rbm_update(k, learning_rate), state, learning_rate, v, key, epochs,
                              "reconstruction error").params
        v = np.asarray(_batched(lambda m, vb: jax.nn.sigmoid(vb @ m.weights + m.hidden_bias), machine, v))
        kernel, bias = np.asarray(machine.weights), np.asarray(machine.hidden_bias)
        if index == 0:
            kernel, bias = fold_input_map(kernel, bias, lo[channel], scale[channel])
        params = {**params, name: {"kernel": kernel, "bias": bias}}
    return _source(context, params, batch_stats, splits.scaling, layers)


def rbm_update(k: int, learning_rate: float) -> Update:
    """One CD-k update (`cd_update`) of the state's params, an `RBM`, on a batch of visible units: the Gibbs
    steps' uniforms are drawn from the batch's key, uniform(key, (k, batch, hidden))."""
    def apply(state: TrainState, x: jax.Array, y: None, key: jax.Array):
        uniforms = jax.random.uniform(key, (k, x.shape[0], state.params.hidden_bias.shape[0]))
        machine, error = cd_update(state.params, x, uniforms, learning_rate)
        return state.replace(step=state.step + 1, params=machine), {"loss": error}, None

    return Update(apply)


def fold_input_map(kernel: np.ndarray, bias: np.ndarray, lo: np.ndarray,
                   scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dense layer (kernel, bias) that was trained on v = (x - lo) / scale (per input), as a layer of x:

        v W + c = x (W / scale) + (c - (lo / scale) W).
    """
    return kernel / scale[:, None], bias - (lo / scale) @ kernel


def _min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel minimum and range (max - min, at least 1e-6) over every axis but the channel's."""
    axes = tuple(range(x.ndim - 1))
    lo = x.min(axis=axes)
    return lo, np.maximum(x.max(axis=axes) - lo, 1e-6)


def _greedy_start(context: Context):
    """(model, its initial params and batch stats, the run's splits, the layers to pretrain) for a greedy method."""
    cfg = context.cfg
    splits = load_splits(cfg.dataset, seed=cfg.trainer.seed)
    model = build_parts(cfg, splits.num_classes, 1).model
    if model.channels:
        raise UserError(f"pretraining={context.method}: greedy layer-wise pretraining trains dense layers, and "
                        f"model.channels={list(model.channels)} adds conv layers; valid: model.channels=[] "
                        "(model=mlp), or pretraining=supervised or auxiliary")
    layers = model.hidden_layers[: cfg.transfer.reuse_layers or len(model.hidden_layers)]
    if not layers:
        raise UserError(f"pretraining={context.method}: the model has no hidden layer to pretrain; valid: "
                        "model.depth >= 1")
    x = splits.all_train_inputs
    variables = model.init({"params": context.key, "dropout": context.key}, jnp.asarray(x[:2]), train=False)
    return model, dict(variables["params"]), dict(variables.get("batch_stats", {})), splits, layers


def _with_top_cut(model: Any) -> Any:
    """The net with one more dense layer on top: `stop` then cuts below every real hidden layer, the top one too
    (at `stop` = the number of hidden layers, `Net` returns the head's logits instead)."""
    return model.clone(widths=tuple(model.dense_widths) + (1,))


def train_layer(context: Context, name: str, update: Update, state: TrainState, learning_rate: float,
                x: np.ndarray, key: jax.Array, epochs: int, what: str) -> TrainState:
    """`state` after `epochs` epochs of `update` over shuffled batches of `x`, in the run's loop (`Loop`).

    A greedy layer's training is a `TrainState` whose params are what the layer learns (an autoencoder's layer,
    block and decoder; an `RBM`): the loop reads a state's step, params and optimizer state, whatever the update.
    One stage, no labels; epoch e's batch order is permutation(fold_in(key, e)), the run's. The handler `_Log`
    writes each epoch's pretraining.jsonl line.
    """
    batch_size = _batch_size(context.cfg, len(x), context.method)
    # The loop reads a Parts' optimizer and schedule (the record's lr); the model and the loss are the update's.
    parts = Parts(None, state.tx, Regularizer(), Schedule(optax.constant_schedule(learning_rate)))
    log = _Log(context, name, classifies=False)
    outcome = Loop(parts, [Stage(name, epochs)], batch_size, 0, jax.device_put(x), None, key, [log], None,
                   update=update, step_losses=True).run(state, 0, 1)
    if outcome.status == "diverged":
        log.nonfinite(outcome.epoch + 1)
    log.done(epochs, what)
    return outcome.state


def _batched(fn: Callable, variables: Any, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """`fn(variables, x)` in batches of `batch_size`, compiled once per batch shape."""
    apply = jax.jit(fn)
    return np.concatenate([np.asarray(apply(variables, x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


def _batch_size(cfg: DictConfig, examples: int, method: str) -> int:
    batch_size = cfg.trainer.batch_size
    if batch_size > examples:
        raise UserError(f"trainer.batch_size: {batch_size} is larger than pretraining={method}'s training set "
                        f"({examples} examples); use at most {examples}")
    return batch_size


def _source(context: Context, params: dict, batch_stats: dict, scaling: Any,
            layers: tuple[str, ...] | None = None) -> Source:
    """The pretrained hidden layers (all of the net's, or `layers`), each with its block, as a transfer source."""
    def flat(tree: Any) -> dict[str, np.ndarray]:
        return {".".join(path): np.asarray(v) for path, v in traverse_util.flatten_dict(dict(tree)).items()}

    names = layers or hidden_layers(params)
    source_layers = [SourceLayer(f"{name} (pretraining={context.method})", kind_of(name),
                                 {k: np.asarray(v) for k, v in params[name].items()},
                                 flat(params.get(block_of(name), {})), flat(batch_stats.get(block_of(name), {})))
                     for name in names]
    return Source(Path(f"pretraining={context.method}"), source_layers, scaling)


# A greedy layer's epoch loss: the mean of its step losses as XLA reduces an array, as pretraining.jsonl has always
# had it; the loop's running sum (the record's train_loss) differs from that in the last bit or two.
_mean = jax.jit(jnp.mean)


class _Log:
    """Each pretraining epoch's loss: a line of pretraining.jsonl, and one console line per layer or body."""

    def __init__(self, context: Context, layer: str, classifies: bool = True):
        self.context, self.layer, self.losses, self.start = context, layer, [], time.perf_counter()
        self.classifies = classifies  # the whole net's epochs also have an accuracy; a greedy layer's do not

    def epoch(self, epoch: int, loss: float, **extra: float) -> None:
        if not math.isfinite(loss):
            self.nonfinite(epoch)
        self.losses.append(loss)
        self.context.record({"method": self.context.method, "layer": self.layer, "epoch": epoch, "loss": loss,
                             **extra})

    def on_epoch_end(self, end: EpochEnd) -> None:
        """An epoch ended in the run's loop: the whole net's (supervised, auxiliary) or a greedy layer's."""
        if self.classifies:
            self.epoch(end.epoch, end.record["train_loss"], accuracy=end.record["train_accuracy"])
        else:
            self.epoch(end.epoch, float(_mean(end.raw["step_losses"])))

    def nonfinite(self, epoch: int) -> None:
        raise UserError(f"pretraining={self.context.method}: the loss of {self.layer} went non-finite in epoch "
                        f"{epoch}; valid: a smaller learning rate (pretraining.learning_rate or "
                        "optimizer.learning_rate)")

    def done(self, epochs: int, what: str) -> None:
        self.context.console.info(f"pretraining={self.context.method} {self.layer}: {what} {self.losses[0]:.4g} -> "
                                  f"{self.losses[-1]:.4g} in {epochs} epochs ({time.perf_counter() - self.start:.1f} s)")
