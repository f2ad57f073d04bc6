from lavis_goal.runners.runner_goal import GoalRunner

__all__ = ["GoalRunner"]
