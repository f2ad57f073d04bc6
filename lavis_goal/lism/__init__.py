"""LISM: mine local (box, sentence) pairs from images and their long captions.

Each caption is split into sentences, each image into candidate regions (the
whole image plus the boxes of a proposer), and a ``goal_clip`` model matches
every sentence to its most similar region by cosine similarity. The output is
GOAL's training list, which the ``goal_json`` dataset builder reads.

Command line: ``python -m lavis_goal.lism --help``. Python::

    from lavis_goal.lism import LismConfig, run_lism
    summary = run_lism(LismConfig(input="test.json", output="pairs.json", image_root="images", proposer="spatial"))
"""

from lavis_goal.lism.proposers import (
    PROPOSERS, FelzenszwalbProposer, RegionProposer, SamProposer, SpatialProposer, build_proposer, mask_to_box,
    masks_to_boxes,
)
from lavis_goal.lism.sentences import Sentence, sentence_offsets, split_sentences


def __getattr__(name):
    # The runner imports lavis_goal's datasets and models. Loading it on first
    # use lets those modules import lavis_goal.lism.sentences without a cycle.
    if name in ("LismConfig", "run_lism"):
        from lavis_goal.lism import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "PROPOSERS", "FelzenszwalbProposer", "LismConfig", "RegionProposer", "SamProposer", "Sentence",
    "SpatialProposer", "build_proposer", "mask_to_box", "masks_to_boxes", "run_lism", "sentence_offsets",
    "split_sentences",
]
