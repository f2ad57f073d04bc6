from lavis_goal.datasets.builders import GoalDemoBuilder, GoalJsonBuilder
from lavis_goal.datasets.goal_datasets import GoalRetrievalEvalDataset, GoalTrainDataset
from lavis_goal.datasets import benchmarks  # noqa: F401  registers the benchmark builders
from lavis_goal.datasets.synthetic import SyntheticScenesBuilder

__all__ = ["GoalDemoBuilder", "GoalJsonBuilder", "GoalRetrievalEvalDataset", "GoalTrainDataset", "SyntheticScenesBuilder"]
