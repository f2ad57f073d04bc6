"""Shared command-line setup of ``lavis_goal.train`` and ``lavis_goal.evaluate``.

The flags follow LAVIS's own train.py and evaluate.py: ``--cfg-path`` and
``--options key=value ...``. A folder given as ``--cfg-path`` means its
``default.yaml``.
"""

import argparse
import logging
import os
import random
import sys
import time

import numpy as np
import torch


def parse_args(description: str, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg-path", required=True, help="run config YAML, or a folder holding default.yaml")
    parser.add_argument(
        "--options",
        nargs="+",
        help="override config entries, as key=value pairs (e.g. run.max_epoch=2 model.pretrained=/path/ckpt.pt)",
    )
    args = parser.parse_args(argv)
    if os.path.isdir(args.cfg_path):
        default = os.path.join(args.cfg_path, "default.yaml")
        if not os.path.isfile(default):
            parser.error(f"--cfg-path {args.cfg_path} is a folder without default.yaml; pass a YAML file")
        args.cfg_path = default
    elif not os.path.isfile(args.cfg_path):
        parser.error(f"--cfg-path {args.cfg_path} does not exist")
    return args


def job_id() -> str:
    """Return a run id with second resolution (LAVIS's 10-minute ids let runs share a folder)."""
    return time.strftime("%Y%m%d%H%M%S")


def seed_everything(seed: int, rank: int) -> None:
    seed = int(seed) + rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("PIL", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_run(args, evaluate_only: bool = False):
    """Load the config, start the process group, build task, datasets, model and runner."""
    import lavis.common.optims  # noqa: F401  registers LAVIS's schedulers
    import lavis.runners  # noqa: F401  registers LAVIS's runners
    from lavis.common.config import Config
    from lavis.common.registry import registry

    import lavis_goal  # noqa: F401  registers lavis_goal's classes
    from lavis_goal.common import dist as goal_dist

    cfg = Config(args)
    run_cfg = cfg.run_cfg
    run_cfg.evaluate = bool(evaluate_only or run_cfg.get("evaluate", False))
    goal_dist.init_distributed(run_cfg)
    setup_logging(goal_dist.get_rank())
    seed_everything(run_cfg.get("seed", 42), goal_dist.get_rank())
    cfg.pretty_print()

    import lavis.tasks as tasks

    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)

    runner_cls = registry.get_runner_class(run_cfg.get("runner", "runner_goal"))
    if runner_cls is None:
        raise ValueError(f"Unknown run.runner {run_cfg.get('runner')!r}")
    runner = runner_cls(cfg=cfg, job_id=job_id(), task=task, model=model, datasets=datasets)
    return cfg, runner
