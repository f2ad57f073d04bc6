from lavis_goal.losses.goal_loss import GoalLoss, GoalLossConfig, contrastive_loss, tsl_loss

__all__ = ["GoalLoss", "GoalLossConfig", "contrastive_loss", "tsl_loss"]
