"""``runner_goal``: LAVIS's ``RunnerBase`` made to work on CPU, under gloo and with GOAL's needs.

Changes from LAVIS 1.0.2's runner:

- the model is moved and wrapped once; DistributedDataParallel gets
  ``device_ids=None`` on CPU;
- loaders skip LAVIS's CUDA prefetcher and its 2-second sleep between
  passes; evaluation loaders are sharded across ranks;
- the learning-rate schedule receives ``iters_per_epoch`` so it can decay per
  iteration;
- checkpoints keep every parameter, are written atomically, and are read with
  ``weights_only=True``; ``checkpoint_best.pth`` follows ``best_metric`` on the
  first validation split (the latest epoch when there is none), and
  ``checkpoint_latest.pth`` allows resuming;
- the output folder is resolved against the working directory and is unique
  per run.
"""

import datetime
import json
import logging
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from lavis.common.registry import registry
from lavis.runners.runner_base import RunnerBase
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from lavis_goal.common import dist as goal_dist
from lavis_goal.common.io import atomic_torch_save, atomic_write_text
from lavis_goal.models.checkpoints import load_checkpoint_file

logger = logging.getLogger(__name__)


class EpochIterator:
    """Endless iterator over a DataLoader that starts a new pass (and sampler epoch) when one ends."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.epoch = 0
        self._iter = None

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return self

    def __next__(self):
        if self._iter is None:
            self._start()
        try:
            return next(self._iter)
        except StopIteration:
            self.epoch += 1
            self._start()
            return next(self._iter)

    def _start(self):
        sampler = getattr(self.loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self.epoch)
        self._iter = iter(self.loader)


def unique_output_dir(base: Path, job_id: str) -> Path:
    """Create and return ``base / job_id``, adding ``-1``, ``-2``... if a run already used it."""
    base.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        candidate = base / (job_id if attempt == 0 else f"{job_id}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"Could not create a new output folder under {base}")


@registry.register_runner("runner_goal")
class GoalRunner(RunnerBase):
    def __init__(self, cfg, task, model, datasets, job_id):
        super().__init__(cfg, task, model, datasets, job_id)
        self.best_metric_value = None
        self.best_epoch = None
        self.history = []

    # ----- output ------------------------------------------------------

    def setup_output_dir(self):
        base = Path(os.path.expanduser(str(self.config.run_cfg.output_dir)))
        if not base.is_absolute():
            base = Path.cwd() / base
        holder = [None]
        if goal_dist.is_main_process():
            holder[0] = str(unique_output_dir(base, self.job_id))
        if goal_dist.get_world_size() > 1:
            dist.broadcast_object_list(holder, src=0)
        output_dir = Path(holder[0])
        result_dir = output_dir / "result"
        if goal_dist.is_main_process():
            result_dir.mkdir(parents=True, exist_ok=True)
        goal_dist.barrier()

        # LAVIS's register_path raises when a second runner registers the same key.
        registry.mapping["paths"]["result_dir"] = str(result_dir)
        registry.mapping["paths"]["output_dir"] = str(output_dir)
        self.result_dir = result_dir
        self.output_dir = output_dir

    # ----- model, optimizer, schedule -----------------------------------

    @property
    def model(self):
        if self._wrapped_model is None:
            self._model = self._model.to(self.device)
            if self.use_distributed:
                device_ids = [self.device.index] if self.device.type == "cuda" else None
                self._wrapped_model = DDP(self._model, device_ids=device_ids)
            else:
                self._wrapped_model = self._model
        return self._wrapped_model

    @property
    def optimizer(self):
        if self._optimizer is None:
            model = self.unwrap_dist_model(self.model)
            weight_decay = float(self.config.run_cfg.weight_decay)
            if hasattr(model, "optimizer_param_groups"):
                groups = model.optimizer_param_groups(weight_decay)
            else:
                groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
            n_params = sum(p.numel() for g in groups for p in g["params"])
            logger.info("Optimizing %d parameters (%.1f M)", n_params, n_params / 1e6)
            self._optimizer = torch.optim.AdamW(
                groups,
                lr=float(self.config.run_cfg.init_lr),
                betas=(0.9, float(self.config.run_cfg.get("beta2", 0.999))),
            )
        return self._optimizer

    @property
    def scaler(self):
        # bf16 autocast needs no loss scaling; fp16 on CUDA does.
        amp = self.config.run_cfg.get("amp", False)
        fp16 = str(self.config.run_cfg.get("amp_dtype", "bfloat16")) == "float16"
        if amp and fp16 and self.device.type == "cuda" and self._scaler is None:
            self._scaler = torch.amp.GradScaler("cuda")
        return self._scaler

    @property
    def lr_scheduler(self):
        if self._lr_sched is None:
            run_cfg = self.config.run_cfg
            scheduler_cls = registry.get_lr_scheduler_class(run_cfg.lr_sched)
            if scheduler_cls is None:
                raise ValueError(f"Unknown run.lr_sched {run_cfg.lr_sched!r}; registered: {sorted(registry.mapping['lr_scheduler_name_mapping'])}")
            self._lr_sched = scheduler_cls(
                optimizer=self.optimizer,
                max_epoch=self.max_epoch,
                min_lr=self.min_lr,
                init_lr=self.init_lr,
                iters_per_epoch=len(self.train_loader),
                decay_rate=run_cfg.get("lr_decay_rate", None),
                warmup_start_lr=run_cfg.get("warmup_lr", -1),
                warmup_steps=run_cfg.get("warmup_steps", 0),
            )
        return self._lr_sched

    # ----- data -----------------------------------------------------------

    def create_loaders(self, datasets, num_workers, batch_sizes, is_trains, collate_fns, dataset_ratios=None):
        loaders = []
        for dataset, batch_size, is_train, collate_fn in zip(datasets, batch_sizes, is_trains, collate_fns):
            if isinstance(dataset, (list, tuple)):
                raise ValueError("runner_goal supports one map-style dataset per split; combine annotation files in one builder")
            sampler = None
            if self.use_distributed:
                sampler = DistributedSampler(dataset, shuffle=is_train, num_replicas=goal_dist.get_world_size(),
                                             rank=goal_dist.get_rank(), drop_last=is_train)
            if is_train and len(dataset) < batch_size * goal_dist.get_world_size():
                raise ValueError(
                    f"The training set has {len(dataset)} records, fewer than one global batch "
                    f"({batch_size} x {goal_dist.get_world_size()} ranks); lower run.batch_size_train"
                )
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                num_workers=num_workers,
                pin_memory=self.device.type == "cuda",
                sampler=sampler,
                shuffle=sampler is None and is_train,
                collate_fn=collate_fn,
                drop_last=is_train,
                persistent_workers=num_workers > 0,
            )
            loaders.append(EpochIterator(loader) if is_train else loader)
        return loaders

    # ----- loop -------------------------------------------------------------

    def train(self):
        start = time.time()
        self.log_config()
        if not self.evaluate_only and self.resume_ckpt_path is not None:
            self._load_checkpoint(self.resume_ckpt_path)

        valid_split = self.valid_splits[0] if self.valid_splits else None
        for epoch in range(self.start_epoch, self.max_epoch):
            record = {"epoch": epoch}
            if not self.evaluate_only:
                stats = self.train_epoch(epoch)
                record.update({f"train_{k}": v for k, v in stats.items()})
                self.log_stats(split_name="train", stats={**stats, "epoch": epoch})

            improved = False
            for split in self.valid_splits:
                metrics = self.eval_epoch(split_name=split, cur_epoch=epoch)
                record.update({f"{split}_{k}": v for k, v in metrics.items() if k != "agg_metrics"})
                if split == valid_split:
                    improved = self.best_metric_value is None or metrics["agg_metrics"] > self.best_metric_value
                    if improved:
                        self.best_metric_value, self.best_epoch = metrics["agg_metrics"], epoch
                self.log_stats(split_name=split, stats={**metrics, "epoch": epoch, "best_epoch": self.best_epoch})
            self.history.append(record)

            if self.evaluate_only:
                break
            if valid_split is None:
                # Without validation the best checkpoint is the latest one. It contains
                # the optimizer state, so it also serves for resuming.
                self.best_epoch = epoch
                improved = True
            if improved:
                self._save_checkpoint(epoch, is_best=True)
            if valid_split is not None and self.config.run_cfg.get("save_latest", True):
                self._save_checkpoint(epoch, is_best=False)
            goal_dist.barrier()

        test_logs = self.evaluate(cur_epoch="best", skip_reload=self.evaluate_only) or {}
        self.write_summary(test_logs, time.time() - start)
        return test_logs

    def evaluate(self, cur_epoch="best", skip_reload=False):
        logs = {}
        for split in self.test_splits:
            logs[split] = self.eval_epoch(split_name=split, cur_epoch=cur_epoch, skip_reload=skip_reload)
        return logs

    # ----- checkpoints --------------------------------------------------------

    def _save_checkpoint(self, cur_epoch, is_best=False):
        if not goal_dist.is_main_process():
            return
        model = self.unwrap_dist_model(self.model)
        payload = {
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": self.config.to_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": cur_epoch,
            "best_metric": self.best_metric_value,
            "best_epoch": self.best_epoch,
        }
        path = self.output_dir / ("checkpoint_best.pth" if is_best else "checkpoint_latest.pth")
        atomic_torch_save(payload, str(path))
        logger.info("Saved %s checkpoint of epoch %d to %s", "best" if is_best else "latest", cur_epoch, path)

    def _reload_best_model(self, model):
        path = self.output_dir / "checkpoint_best.pth"
        logger.info("Loading the best checkpoint %s (epoch %s)", path, self.best_epoch)
        checkpoint = load_checkpoint_file(str(path))
        model.load_state_dict(checkpoint["model"], strict=True)
        return model

    def _load_checkpoint(self, url_or_filename):
        checkpoint = load_checkpoint_file(str(url_or_filename))
        self.unwrap_dist_model(self.model).load_state_dict(checkpoint["model"], strict=True)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.start_epoch = int(checkpoint["epoch"]) + 1
        self.best_metric_value = checkpoint.get("best_metric")
        self.best_epoch = checkpoint.get("best_epoch")
        if self.best_epoch is not None and goal_dist.is_main_process():
            # Keep the best checkpoint of the earlier run reachable from this run's folder.
            best = Path(url_or_filename).with_name("checkpoint_best.pth")
            if best.is_file() and not (self.output_dir / "checkpoint_best.pth").exists():
                atomic_torch_save(load_checkpoint_file(str(best)), str(self.output_dir / "checkpoint_best.pth"))
        logger.info("Resumed from %s at epoch %d", url_or_filename, self.start_epoch)

    # ----- reporting ------------------------------------------------------

    def log_stats(self, stats, split_name):
        if not goal_dist.is_main_process() or not isinstance(stats, dict):
            return
        with open(self.output_dir / "log.txt", "a", encoding="utf-8") as f:
            f.write(json.dumps({f"{split_name}_{k}": v for k, v in stats.items()}) + "\n")

    def write_summary(self, test_logs, seconds):
        if not goal_dist.is_main_process():
            return
        from lavis_goal.report import summary_table

        text = summary_table(self.history, test_logs, self.task.recall_k, self.best_epoch)
        text += f"\nTraining and evaluation took {datetime.timedelta(seconds=int(seconds))}. Output: {self.output_dir}\n"
        atomic_write_text(str(self.output_dir / "summary.md"), text)
        print(text, flush=True)
