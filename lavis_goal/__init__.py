"""GOAL (Global-local Object Alignment Learning) as a LAVIS plugin.

Importing the package registers its models (``goal_clip``), task
(``goal_retrieval``), dataset builders (``goal_json``, ``goal_demo``),
processors, runner (``runner_goal``) and LR schedule (``goal_cosine_iter``)
with ``lavis.common.registry``.
"""

import lavis  # noqa: F401  LAVIS registers its own classes first

from lavis_goal.common import lr_schedulers  # noqa: F401
from lavis_goal import datasets, models, processors, runners, tasks  # noqa: F401
from lavis_goal.models import model_zoo

__version__ = "0.1.0"
__all__ = ["model_zoo", "__version__"]
