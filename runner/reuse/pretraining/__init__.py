"""Pretraining: the lower layers learn first, then the run's own task (fine-tuning) reuses them.

The `pretraining` conf group names one function, `f(context, **its conf parameters) -> Source` (those of
runner/reuse/pretraining/methods.py, or one of your own). `pretrain(cfg, run_dir, console)` there calls it with a
`Context` of the run; it returns a `runner.reuse.transfer.Source` held in memory (the pretrained hidden layers with their blocks, and the input scaling
they were trained with), or None for `pretraining=none`. The run grafts it exactly as it grafts `transfer.source`,
with the same `transfer.reuse_layers`, `freeze`, `unfreeze_after`, `reused_lr_scale` and `cache`.

  supervised   the whole net trains on other classes of the same dataset (`pretraining.classes`, every label
               of them) with the run's own recipe (optimizer, schedule, regularizers) and compiled epoch.
  autoencoder  greedy layer-wise (Bengio et al. 2007): hidden layer k (its weights and block, dropout off) is the
               encoder, a dense layer back to its input the decoder; it minimizes the mean squared reconstruction
               error of the outputs of the frozen layers below (inference mode), for `epochs` epochs, with Adam.
  rbm          greedy layer-wise (Hinton et al. 2006): hidden layer k is a restricted Boltzmann machine with
               sigmoid units, trained by CD-k (`cd_update`); the next one learns from its p(h|v).
  auxiliary    the whole net learns a task whose labels are generated (`generated_task`): which rotation of an
               image was applied, with the run's own recipe and compiled epoch.

Unsupervised and generated-label pretraining use every training input of the run's dataset, also those whose
labels `dataset.labeled_examples` set aside (`Splits.x_unlabeled`); never validation or test inputs. Greedy
methods pretrain dense layers only (a conv layer is refused) and only the lowest `transfer.reuse_layers`.
Every pretraining epoch is one compiled program in the run's loop (runner/training/loop.py; a greedy layer is one run of it);
each epoch's loss goes to `pretraining.jsonl` in the run dir.
Pretraining runs on one device and, on `trainer.resume=true`, runs again (deterministic), before the checkpoint's
weights replace the grafted ones.
"""

from __future__ import annotations

from typing import Any


def none(context: Any) -> None:
    """No pretraining: the run starts from fresh weights (or from `transfer.source`). It lives here, apart from the
    methods, so that asking whether a config pretrains imports no JAX (the checks before a run: runner/cli/relations.py)."""
    del context
