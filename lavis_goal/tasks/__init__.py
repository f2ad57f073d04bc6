from lavis_goal.tasks.goal_retrieval import GoalRetrievalTask
from lavis_goal.tasks.retrieval_metrics import retrieval_metrics, retrieval_ranks

__all__ = ["GoalRetrievalTask", "retrieval_metrics", "retrieval_ranks"]
