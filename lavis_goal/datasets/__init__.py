from lavis_goal.datasets.builders import GoalDemoBuilder, GoalJsonBuilder
from lavis_goal.datasets.goal_datasets import GoalRetrievalEvalDataset, GoalTrainDataset

__all__ = ["GoalDemoBuilder", "GoalJsonBuilder", "GoalRetrievalEvalDataset", "GoalTrainDataset"]
