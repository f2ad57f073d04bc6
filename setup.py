from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="lavis-goal",
    version="0.1.0",
    description="GOAL (Global-local Object Alignment Learning) for long-caption retrieval, as a LAVIS plugin",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["lavis_goal", "lavis_goal.*"]) + ["lavis_goal.plugin_configs"],
    package_dir={"lavis_goal.plugin_configs": "plugin_configs"},
    package_data={
        "lavis_goal": ["models/model_configs/*.json", "datasets/demo/*.json", "models/blip2_assets/*.json", "models/blip2_assets/*/*"],
        "lavis_goal.plugin_configs": ["models/*.yaml", "datasets/*/*.yaml"],
    },
    install_requires=[
        "salesforce-lavis==1.0.2",
        "open_clip_torch>=2.24,<3",
        "numpy<2",
        "torch",
        "torchvision",
        "omegaconf",
        "fairscale",
        "scikit-image",
        "matplotlib",
        "Pillow",
        "tqdm",
    ],
    extras_require={"dev": ["pytest", "hypothesis", "segment-anything"], "sam": ["segment-anything"]},
)
