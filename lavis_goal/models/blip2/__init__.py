"""Building blocks of ``goal_blip2``: backbones built offline and BLIP-2 retrieval scoring."""
