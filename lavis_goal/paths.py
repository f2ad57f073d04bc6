"""Locations of the configs and data files that ship with lavis_goal."""

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
OPEN_CLIP_CONFIGS = PACKAGE_ROOT / "models" / "model_configs"


def _plugin_configs_root() -> Path:
    # A source checkout or editable install keeps plugin_configs/ next to the
    # package; a wheel installs the same folder as lavis_goal/plugin_configs.
    for candidate in (PACKAGE_ROOT.parent / "plugin_configs", PACKAGE_ROOT / "plugin_configs"):
        if (candidate / "models").is_dir():
            return candidate
    raise FileNotFoundError(
        f"plugin_configs/ not found next to {PACKAGE_ROOT} nor inside it; reinstall lavis-goal"
    )


PLUGIN_CONFIGS = _plugin_configs_root()


def plugin_config(relative: str) -> str:
    """Return the absolute path of a default config under ``plugin_configs/``.

    LAVIS resolves relative config paths inside its own package, so every
    registered default is given as an absolute path.
    """
    path = PLUGIN_CONFIGS / relative
    if not path.is_file():
        raise FileNotFoundError(f"Default config {path} is missing from the lavis_goal installation")
    return str(path)
