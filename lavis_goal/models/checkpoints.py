"""Reading checkpoints safely."""

import logging
import os
from typing import Any, Dict

import torch

logger = logging.getLogger(__name__)


# Weight files looked for, in this order, when a checkpoint path is a folder:
# transformers' save_pretrained names, then open_clip's Hugging Face Hub names.
WEIGHT_FILE_NAMES = (
    "pytorch_model.bin", "model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.safetensors",
)


def resolve_checkpoint_path(path: str) -> str:
    """Return ``path``, or the weight file inside it when ``path`` is a folder."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path
    for name in WEIGHT_FILE_NAMES:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"Checkpoint folder {path} contains none of {', '.join(WEIGHT_FILE_NAMES)}; pass the weight file itself"
    )


def load_checkpoint_file(path: str, allow_pickle: bool = False) -> Any:
    """Load a checkpoint onto the CPU with ``weights_only=True`` unless ``allow_pickle``.

    ``weights_only=True`` rejects arbitrary Python objects, so a malicious
    pickle cannot run code. Set ``allow_pickle`` only for files you trust.
    ``.safetensors`` files contain no pickle and are read with safetensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path} not found; check the path in the config")
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
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


def _load_safetensors(path: str) -> Dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise ValueError(f"Checkpoint {path} is a safetensors file; install safetensors (pip install safetensors)") from error
    return load_file(path, device="cpu")


def extract_state_dict(checkpoint: Any, path: str) -> Dict[str, torch.Tensor]:
    """Return the model weights of a LAVIS, open_clip or bare state-dict checkpoint.

    A TorchScript archive (OpenAI's original CLIP ``.pt`` files), which
    ``torch.load`` returns only with ``allow_pickle``, gives its module's state
    dict. Causal ``attn_mask`` buffers are left out because the model rebuilds them,
    and TorchScript saves them although open_clip marks them non-persistent.
    """
    if isinstance(checkpoint, torch.jit.ScriptModule):
        checkpoint = {k: v for k, v in checkpoint.state_dict().items() if not k.endswith("attn_mask")}
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
