"""rim: the ConvGRU Recurrent Inference Machine (Putzky & Welling 2017) of the MagNet paper.

Built on :mod:`lensinv` (never the other way round): torch sparse physics
(:mod:`rim.physics`), the model (:mod:`rim.model`), data (:mod:`rim.data`) and
the training loop (:mod:`rim.train`, used by ``scripts/train_rim.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from .model import DEFAULT_TRANSFORMS, RIM, RIMConfig
from .physics import BatchedOperator, BatchedVisibilityOperator
from .symmetry import TRANSFORM_COUNTS

WEIGHTS = Path(__file__).resolve().parent / "weights" / "rim_realistic.pt"
#: weights trained on interferometric data (the alma preset; see their model card)
ALMA_WEIGHTS = WEIGHTS.with_name("rim_alma.pt")

__all__ = ["DEFAULT_TRANSFORMS", "RIM", "RIMConfig", "TRANSFORM_COUNTS", "BatchedOperator", "BatchedVisibilityOperator",
           "load_pretrained", "resolve_device", "WEIGHTS", "ALMA_WEIGHTS"]

_DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """The torch device named by ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``), checked to exist.

    Parameters
    ----------
    device : str or torch.device
        Device name.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        Naming ``device`` when the name is not a device, or the device is not available here
        (``"cuda"`` without a GPU, a GPU index beyond the ones present).
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device.strip())
        except RuntimeError as exc:
            raise ValueError(f"device must be one of {', '.join(_DEVICE_TYPES)} (e.g. 'cuda:0'), got {device!r}") from exc
    else:
        raise ValueError(f"device must be a string or torch.device, got {type(device).__name__}")
    if dev.type not in _DEVICE_TYPES:
        raise ValueError(f"device must be one of {', '.join(_DEVICE_TYPES)} (e.g. 'cuda:0'), got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available (use device='cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are available")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available (use device='cpu')")
    return dev


def load_pretrained(path: Optional[Union[str, Path]] = None, device: Union[str, torch.device] = "cpu") -> RIM:
    """Load the shipped weights (``path=None``) or any checkpoint written by ``scripts/train_rim.py``.

    Returns the model in eval mode on ``device``; ``model.reconstruct(op, image, sigma)``
    reconstructs one lens. Loading never executes code from the file (``torch.load`` with
    ``weights_only=True``). Raises ValueError for a missing, foreign or unsafe file, a
    checkpoint without its recorded architecture (``model_config``), weights that do not fit
    that architecture, or a ``device`` that is not available (see :func:`resolve_device`).
    """
    from .train import load_checkpoint

    dev = resolve_device(device)
    path = WEIGHTS if path is None else Path(path)
    ck = load_checkpoint(path)
    if not isinstance(ck.get("model_config"), dict):
        raise ValueError(f"{path}: the checkpoint has no model_config (the architecture of its weights)")
    try:
        config = RIMConfig(**ck["model_config"])
        model = RIM(config)
        model.load_state_dict(ck["model"])
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: the weights do not match the recorded architecture ({exc})") from exc
    return model.to(dev).eval()
