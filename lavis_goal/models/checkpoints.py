"""Reading checkpoints safely."""

import logging
import os
from typing import Any, Dict

import torch

logger = logging.getLogger(__name__)


def load_checkpoint_file(path: str, allow_pickle: bool = False) -> Any:
    """Load a checkpoint onto the CPU with ``weights_only=True`` unless ``allow_pickle``.

    ``weights_only=True`` refuses arbitrary Python objects, so a malicious
    pickle cannot run code. Set ``allow_pickle`` only for files you trust.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path} not found; check the path in the config")
    if allow_pickle:
        logger.warning("Loading %s with full pickle support: only do this for files you trust", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError or RuntimeError here
        raise ValueError(
            f"Checkpoint {path} holds objects other than tensors and plain containers, so it was not "
            f"loaded ({type(error).__name__}: {error}). If you trust the file, set allow_pickle: true "
            "in the model config."
        ) from error


def extract_state_dict(checkpoint: Any, path: str) -> Dict[str, torch.Tensor]:
    """Return the model weights of a LAVIS, open_clip or bare state-dict checkpoint."""
    if isinstance(checkpoint, dict):
        for key in ("model", "state_dict"):
            if key in checkpoint and isinstance(checkpoint[key], dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"Checkpoint {path} is not a state dict (name -> tensor), nor a dict with 'model' or 'state_dict'")
    # DistributedDataParallel prefixes every name with "module."
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module.") :]: v for k, v in checkpoint.items()}
    return checkpoint
