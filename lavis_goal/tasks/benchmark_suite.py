"""``goal_benchmark_suite``: evaluate one checkpoint on every benchmark the user has data for.

A suite config lists every benchmark builder with its data folder left
null; the user sets the ones they have. Benchmarks without data are left out
with a log line, and so are their splits in ``run.test_splits``. Each split
is evaluated by its own protocol: Recall@K with the benchmark's cut-offs
(R@1/5/25/50 for long captions, R@1/5/10 for COCO and Flickr30k), mAP@K for
the joint test, top-K accuracy for zero-shot classification.
"""

import logging
from pathlib import Path
from types import SimpleNamespace

from lavis.common.registry import registry

from lavis_goal.common.config_check import check_keys
from lavis_goal.tasks.goal_retrieval import RUN_CONFIG_KEYS, GoalRetrievalTask, _writable, record_split_result
from lavis_goal.tasks.joint_retrieval import DEFAULT_MAP_K, joint_evaluation, joint_metrics
from lavis_goal.tasks.retrieval_metrics import retrieval_metrics
from lavis_goal.tasks.zeroshot_classification import DEFAULT_TOPK, classification_metrics, zeroshot_evaluation

logger = logging.getLogger(__name__)


def method_label(model_cfg) -> str:
    """Name the evaluated weights: ``<run folder>/<run id>`` of a fine-tuned checkpoint, else the model type and its pretrained weights."""
    finetuned = model_cfg.get("finetuned", None)
    if finetuned:
        path = Path(str(finetuned))
        return f"{path.parent.parent.name}/{path.parent.name}" if path.parent.name else path.name
    pretrained = model_cfg.get("pretrained", None)
    return f"{model_cfg.get('arch', 'model')} {model_cfg.get('model_type', '')} ({pretrained or 'random init'})".replace("  ", " ")


def declared_splits(dataset_cfg) -> set:
    """Return the split names a benchmark's config declares, built or not."""
    build_info = dataset_cfg.get("build_info", None) or {}
    splits = build_info.get("splits", None) or build_info.get("annotations", None) or {}
    return {str(split) for split in splits}


@registry.register_task("goal_benchmark_suite")
class GoalBenchmarkSuiteTask(GoalRetrievalTask):
    """Evaluate every configured benchmark split with its own protocol.

    Run options besides ``goal_retrieval``'s: ``method`` is the row label in
    result files and reports (by default derived from ``model.finetuned``).
    ``map_k`` and ``topk`` are the cut-offs for benchmarks that set none.
    """

    RUN_KEYS = RUN_CONFIG_KEYS | {"method", "map_k", "topk"}

    def __init__(self, run_cfg=None, method: str = ""):
        super().__init__(run_cfg)
        self.method = method
        self.map_k = tuple(int(k) for k in self.run_cfg.get("map_k", DEFAULT_MAP_K))
        self.topk = tuple(int(k) for k in self.run_cfg.get("topk", DEFAULT_TOPK))

    @classmethod
    def setup_task(cls, cfg=None, **kwargs):
        if cfg is None:
            return cls()
        check_keys(cfg.run_cfg, cls.RUN_KEYS, "run")
        return cls(cfg.run_cfg, method=str(cfg.run_cfg.get("method", None) or method_label(cfg.model_cfg)))

    def build_datasets(self, cfg):
        """Build the benchmarks whose data is set and keep only their splits in ``run.test_splits``."""
        configured, skipped, known = {}, [], set()
        for name in cfg.datasets_cfg:
            dataset_cfg = cfg.datasets_cfg[name]
            builder_cls = registry.get_builder_class(name)
            known |= declared_splits(dataset_cfg)
            if builder_cls is not None and hasattr(builder_cls, "is_configured") and not builder_cls.is_configured(dataset_cfg):
                skipped.append(name)
                continue
            configured[name] = dataset_cfg
        if skipped:
            logger.info("No data set for %s (build_info.root or storage is null); left out", ", ".join(skipped))
        if not configured:
            raise ValueError(
                "No benchmark of the suite has its data set; set the data folder of at least one, "
                "e.g. --options datasets.docci.build_info.root=/data/docci"
            )

        datasets = super().build_datasets(SimpleNamespace(model_cfg=cfg.model_cfg, datasets_cfg=configured))
        self._keep_built_test_splits(cfg.run_cfg, datasets, known)
        return datasets

    @staticmethod
    def _keep_built_test_splits(run_cfg, datasets: dict, known: set) -> None:
        built = {split for splits in datasets.values() for split in splits}
        requested = [str(s) for s in (run_cfg.get("test_splits", None) or [])]
        unknown = [s for s in requested if s not in built and s not in known]
        if unknown:
            raise ValueError(f"run.test_splits names {', '.join(unknown)}, which no dataset declares; declared splits: {', '.join(sorted(known))}")
        evaluated = [s for s in requested if s in built]
        if not evaluated:
            raise ValueError(f"None of run.test_splits ({', '.join(requested) or 'empty'}) has data; built splits: {', '.join(sorted(built))}")
        left_out = [s for s in requested if s not in built]
        if left_out:
            logger.info("Test splits without data, left out: %s", ", ".join(left_out))
        with _writable(run_cfg):
            run_cfg.test_splits = evaluated
        logger.info("Evaluating %s", ", ".join(evaluated))

    def evaluation(self, model, data_loader, cuda_enabled=True):
        dataset = data_loader.dataset
        protocol = getattr(dataset, "protocol", "retrieval")
        if protocol == "joint":
            return joint_evaluation(model, data_loader, self.run_cfg)
        if protocol == "classification":
            return zeroshot_evaluation(model, data_loader, self.run_cfg)
        result = super().evaluation(model, data_loader, cuda_enabled)
        result.update(protocol="retrieval", benchmark=getattr(dataset, "benchmark", None), recall_k=getattr(dataset, "recall_k", None))
        return result

    def after_evaluation(self, val_result, split_name, epoch, **kwargs):
        """Compute the split's metrics, write ``result/<split>_<epoch>.json`` and return them."""
        protocol = val_result.get("protocol", "retrieval")
        if protocol == "joint":
            metrics = joint_metrics(val_result, val_result.get("map_k") or self.map_k)
        elif protocol == "classification":
            metrics = classification_metrics(val_result, val_result.get("topk") or self.topk)
        else:
            metrics = self._retrieval_metrics(val_result)

        extra = {"benchmark": val_result.get("benchmark"), "protocol": protocol, "method": self.method}
        record_split_result(split_name, epoch, metrics, extra, protocol, ("t2i_", "i2t_", "top"))
        return metrics

    def _retrieval_metrics(self, val_result) -> dict:
        recall_k = tuple(val_result.get("recall_k") or self.recall_k)
        metrics = retrieval_metrics(val_result["score_i2t"], val_result["score_t2i"], val_result["img2txt"], val_result["txt2img"], recall_k)
        metrics["agg_metrics"] = metrics["mean_r1"] if "mean_r1" in metrics else metrics["r_mean"]
        metrics["n_images"] = len(val_result["img2txt"])
        metrics["n_texts"] = len(val_result["txt2img"])
        return metrics
