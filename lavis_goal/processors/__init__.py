from lavis_goal.processors.goal_processors import (
    GoalCaptionProcessor,
    GoalImageEvalProcessor,
    GoalImageTrainProcessor,
    to_rgb,
)

__all__ = ["GoalCaptionProcessor", "GoalImageEvalProcessor", "GoalImageTrainProcessor", "to_rgb"]
