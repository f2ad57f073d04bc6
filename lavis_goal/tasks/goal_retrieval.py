"""The ``goal_retrieval`` task: GOAL training steps and retrieval evaluation."""

import logging
import math
from collections import defaultdict
from typing import Tuple

import torch
from lavis.common.registry import registry
from lavis.tasks.base_task import BaseTask
from omegaconf import OmegaConf
from tqdm import tqdm

from lavis_goal.common import dist as goal_dist
from lavis_goal.common.config_check import check_keys
from lavis_goal.losses import GoalLossConfig
from lavis_goal.tasks.retrieval_metrics import DEFAULT_RECALL_K, retrieval_metrics

logger = logging.getLogger(__name__)

RUN_CONFIG_KEYS = {
    "task", "runner", "lr_sched", "init_lr", "min_lr", "warmup_lr", "warmup_steps", "lr_decay_rate",
    "weight_decay", "beta2", "max_epoch", "batch_size_train", "batch_size_eval", "num_workers",
    "accum_grad_iters", "max_grad_norm", "seed", "output_dir", "amp", "amp_dtype", "resume_ckpt_path",
    "evaluate", "train_splits", "valid_splits", "test_splits", "device", "world_size", "dist_url",
    "distributed", "use_dist_eval_sampler", "log_freq", "recall_k", "best_metric", "dist_timeout_minutes",
    "rank", "gpu", "dist_backend", "save_latest",
}


def move_to_device(samples: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in samples.items()}


@registry.register_task("goal_retrieval")
class GoalRetrievalTask(BaseTask):
    """Train with the model's GOAL loss and evaluate Recall@K in both directions.

    Run options read here: ``recall_k`` (default 1, 5, 10, 25, 50),
    ``best_metric`` (default ``mean_r1``, the key used to keep the best
    checkpoint), ``amp`` with ``amp_dtype`` (``bfloat16`` by default; GPU
    only), ``max_grad_norm`` (no clipping by default) and ``log_freq``.
    """

    RUN_KEYS = RUN_CONFIG_KEYS

    def __init__(self, run_cfg=None):
        super().__init__()
        run_cfg = run_cfg if run_cfg is not None else OmegaConf.create()
        self.run_cfg = run_cfg
        self.recall_k = tuple(int(k) for k in run_cfg.get("recall_k", DEFAULT_RECALL_K))
        self.best_metric = run_cfg.get("best_metric", "mean_r1" if 1 in self.recall_k else "r_mean")
        self.amp = bool(run_cfg.get("amp", False))
        self.amp_dtype = getattr(torch, str(run_cfg.get("amp_dtype", "bfloat16")))
        max_norm = run_cfg.get("max_grad_norm", None)
        self.max_grad_norm = float(max_norm) if max_norm is not None else None
        self.result_dir = None

    @classmethod
    def setup_task(cls, cfg=None, **kwargs):
        run_cfg = cfg.run_cfg if cfg is not None else None
        if run_cfg is not None:
            check_keys(run_cfg, cls.RUN_KEYS, "run")
        return cls(run_cfg)

    def build_datasets(self, cfg):
        """Build every dataset, giving each the model's tokenizer and context length."""
        model_cfg = cfg.model_cfg
        datasets = {}
        if not cfg.datasets_cfg:
            raise ValueError("The config has no datasets section entries; add one, e.g. datasets: {goal_demo: {}}")
        for name in cfg.datasets_cfg:
            dataset_cfg = cfg.datasets_cfg[name]
            tokenizer = dataset_cfg.get("tokenizer", None)
            if tokenizer is None or (tokenizer.get("model_name", None) is None and tokenizer.get("kind", None) is None):
                with _writable(dataset_cfg):
                    dataset_cfg.tokenizer = _span_tokenizer_config(model_cfg)
            if dataset_cfg.get("load_local_pairs", None) is None:
                loss = GoalLossConfig.from_dict(_to_dict(model_cfg.get("loss", None)))
                with _writable(dataset_cfg):
                    dataset_cfg.load_local_pairs = loss.uses_local_inputs
            builder_cls = registry.get_builder_class(name)
            if builder_cls is None:
                raise ValueError(f"Unknown dataset {name!r}; registered: {sorted(registry.mapping['builder_name_mapping'])}")
            built = builder_cls(dataset_cfg).build_datasets()
            for split, dataset in built.items():
                if len(dataset) == 0:
                    raise ValueError(f"Dataset {name!r} split {split!r} is empty; check its annotation file")
            datasets[name] = built
        return datasets

    # ----- training ------------------------------------------------------

    def _train_inner_loop(self, epoch, iters_per_epoch, model, data_loader, optimizer, lr_scheduler,
                          scaler=None, start_iters=None, log_freq=50, cuda_enabled=False, accum_grad_iters=1):
        device = next(model.parameters()).device
        autocast = torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp and device.type == "cuda")
        if not hasattr(data_loader, "__next__"):
            data_loader = iter(data_loader)

        sums = defaultdict(float)
        progress = tqdm(range(iters_per_epoch), desc=f"Epoch {epoch}", disable=not goal_dist.is_main_process(), dynamic_ncols=True)
        for step in progress:
            samples = move_to_device(next(data_loader), device)
            lr = lr_scheduler.step(cur_epoch=epoch, cur_step=step)
            with autocast:
                output = model(samples)
            loss = output["loss"]
            terms = {k: float(v.detach()) for k, v in output.items() if k.startswith("loss") or k == "logit_scale"}
            self._check_finite(loss, terms, epoch, step, iters_per_epoch)

            scaled = loss / accum_grad_iters
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            if (step + 1) % accum_grad_iters == 0:
                self._optimizer_step(model, optimizer, scaler)

            for key, value in terms.items():
                sums[key] += value
            lr = optimizer.param_groups[0]["lr"]
            progress.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{lr:.2e}")
            if log_freq and (step + 1) % log_freq == 0:
                logger.info("epoch %d step %d/%d lr %.3e %s", epoch, step + 1, iters_per_epoch, lr,
                            " ".join(f"{k} {v:.4f}" for k, v in terms.items()))

        stats = {k: v / max(1, iters_per_epoch) for k, v in sums.items()}
        stats = self._average_over_ranks(stats)
        stats["lr"] = optimizer.param_groups[0]["lr"]
        logger.info("Epoch %d training: %s", epoch, " ".join(f"{k} {v:.4f}" for k, v in stats.items()))
        return stats

    def _optimizer_step(self, model, optimizer, scaler):
        if scaler is not None:
            scaler.unscale_(optimizer)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @staticmethod
    def _check_finite(loss, terms, epoch, step, iters_per_epoch):
        finite = torch.tensor([1.0 if math.isfinite(terms["loss"]) else 0.0])
        if goal_dist.get_world_size() > 1:
            finite = finite.to(goal_dist.backend_device())
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if float(finite) < 1.0:
            detail = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
            raise FloatingPointError(
                f"Non-finite loss at epoch {epoch}, step {step} (global step {epoch * iters_per_epoch + step}) "
                f"on rank {goal_dist.get_rank()}: {detail}. Lower the learning rate or check the inputs of this batch."
            )

    @staticmethod
    def _average_over_ranks(stats):
        if goal_dist.get_world_size() == 1 or not stats:
            return stats
        keys = sorted(stats)
        values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=goal_dist.backend_device())
        values = goal_dist.all_reduce_sum(values) / goal_dist.get_world_size()
        return dict(zip(keys, values.cpu().tolist()))

    # ----- evaluation ------------------------------------------------------

    def evaluation(self, model, data_loader, cuda_enabled=True):
        score_i2t, score_t2i = model.compute_sim_matrix(data_loader, task_cfg=self.run_cfg)
        dataset = data_loader.dataset
        return {"score_i2t": score_i2t, "score_t2i": score_t2i, "img2txt": dataset.img2txt, "txt2img": dataset.txt2img}

    def after_evaluation(self, val_result, split_name, epoch, **kwargs):
        """Compute Recall@K, write ``result/<split>_<epoch>.json`` and return the metrics.

        ``agg_metrics`` is the configured ``best_metric``. Every rank computes
        the same numbers; only the main process writes.
        """
        metrics = retrieval_metrics(
            val_result["score_i2t"], val_result["score_t2i"], val_result["img2txt"], val_result["txt2img"], self.recall_k
        )
        if self.best_metric not in metrics:
            raise ValueError(f"run.best_metric {self.best_metric!r} is not a retrieval metric; choose one of {sorted(metrics)}")
        metrics["agg_metrics"] = metrics[self.best_metric]
        metrics["n_images"] = len(val_result["img2txt"])
        metrics["n_texts"] = len(val_result["txt2img"])

        record_split_result(split_name, epoch, metrics, {}, "retrieval", ("t2i_r", "i2t_r"))
        return metrics


def record_split_result(split_name, epoch, metrics: dict, extra: dict, label: str, prefixes: Tuple[str, ...]) -> None:
    """Write ``result/<split>_<epoch>.json`` on the main process and log the metrics whose names start with ``prefixes``."""
    if not goal_dist.is_main_process():
        return
    from lavis_goal.report import write_split_result  # late import: python -m lavis_goal.report warns when the package already loaded it

    path = write_split_result(registry.get_path("result_dir"), split_name, epoch, {**extra, **metrics})
    summary = " ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k.startswith(prefixes))
    logger.info("%s %s (epoch %s): %s -> %s", split_name, label, epoch, summary, path)


def _span_tokenizer_config(model_cfg) -> dict:
    """Return the datasets' ``tokenizer`` section for the model.

    A model class with a ``span_tokenizer_config(model_cfg)`` classmethod
    (``goal_blip2``) chooses its own; other models get the open_clip
    tokenizer of ``model_name`` at ``context_length`` positions.
    """
    model_cls = registry.get_model_class(model_cfg.get("arch", None))
    if model_cls is not None and hasattr(model_cls, "span_tokenizer_config"):
        return model_cls.span_tokenizer_config(model_cfg)
    return {"model_name": model_cfg.model_name, "context_length": int(model_cfg.get("context_length", 248))}


def _to_dict(node):
    if node is None or isinstance(node, dict):
        return node
    return OmegaConf.to_container(node, resolve=True)


class _writable:
    """Temporarily lift OmegaConf's struct and read-only flags on a node."""

    def __init__(self, node):
        self.node = node

    def __enter__(self):
        self.struct = OmegaConf.is_struct(self.node)
        self.readonly = OmegaConf.is_readonly(self.node)
        OmegaConf.set_struct(self.node, False)
        OmegaConf.set_readonly(self.node, False)
        return self.node

    def __exit__(self, *exc):
        OmegaConf.set_struct(self.node, self.struct)
        OmegaConf.set_readonly(self.node, self.readonly)
        return False
