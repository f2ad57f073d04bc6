from lavis.common.registry import registry

from lavis_goal.models.goal_clip import GoalCLIP
from lavis_goal.models.goal_blip2 import GoalBlip2


class PluginModelZoo:
    """Models and model types registered now, plugins included.

    ``lavis.models.model_zoo`` is built when LAVIS is imported, before any
    plugin registers; this listing reads the registry when it is printed.
    """

    def _entries(self):
        mapping = registry.mapping["model_name_mapping"]
        return {name: list(cls.PRETRAINED_MODEL_CONFIG_DICT) for name, cls in sorted(mapping.items())}

    def __iter__(self):
        return iter(self._entries().items())

    def __len__(self):
        return sum(len(types) for types in self._entries().values())

    def __str__(self):
        rows = [f"{'Architectures':<30} Types", "=" * 50]
        rows += [f"{name:<30} {', '.join(types)}" for name, types in self._entries().items()]
        return "\n".join(rows)


model_zoo = PluginModelZoo()

__all__ = ["GoalBlip2", "GoalCLIP", "model_zoo"]
