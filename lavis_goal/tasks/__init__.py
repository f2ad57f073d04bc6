from lavis_goal.tasks.goal_retrieval import GoalRetrievalTask
from lavis_goal.tasks.retrieval_metrics import retrieval_metrics, retrieval_ranks
from lavis_goal.tasks import benchmark_suite, joint_retrieval, zeroshot_classification  # noqa: F401  registers their tasks

__all__ = ["GoalRetrievalTask", "retrieval_metrics", "retrieval_ranks"]
