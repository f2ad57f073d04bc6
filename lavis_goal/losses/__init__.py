from lavis_goal.losses.goal_loss import GoalLoss, GoalLossConfig, contrastive_loss, query_max_similarity, tsl_loss

__all__ = ["GoalLoss", "GoalLossConfig", "contrastive_loss", "query_max_similarity", "tsl_loss"]
