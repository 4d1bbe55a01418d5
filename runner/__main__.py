"""`python -m runner [overrides]`: the Hydra entry point.

Before Hydra creates any run dir, every job's config (each combination of a `-m` sweep) is composed
and checked; a user error prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runner.config import CONF_DIR, register_schemas
from runner.console import Console, error
from runner.errors import UserError
from runner.interrupts import Interrupted
from runner.outputs import remove_new_dir
from runner.preflight import preflight

register_schemas()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train one job; the return value (best validation accuracy) is what Hydra sweepers optimize."""
    from runner.run import train_and_evaluate  # jax and tfds load only once the config is known good

    use_compilation_cache()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    console = Console()
    try:
        summary = train_and_evaluate(cfg, run_dir, console)
    except UserError as e:
        if not cfg.trainer.resume:  # a resumed run dir holds earlier results: keep it
            remove_new_dir(run_dir, stop_at=Path.cwd())
        error(str(e))
        sys.exit(2)
    except Interrupted as e:
        sys.exit(e.exit_code)
    console.table("results", ["status", "test_accuracy", "test_loss", "best_val_accuracy", "epochs",
                              "train_examples_per_s", "wall_time_s"],
                  [[summary[k] for k in ("status", "test_accuracy", "test_loss", "best_val_accuracy", "epochs",
                                         "train_examples_per_s", "wall_time_s")]])
    console.info(f"results in {run_dir}")
    return summary["best_val_accuracy"]


def use_compilation_cache() -> None:
    """Keep compiled programs on disk, so a config run before starts training without recompiling."""
    import jax

    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "runner" / "jax"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def cli() -> None:
    """Check the whole command line, then hand it to Hydra."""
    try:
        preflight(sys.argv[1:])
    except UserError as e:
        error(str(e))
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
