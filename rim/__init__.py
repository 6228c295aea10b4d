"""rim: the ConvGRU Recurrent Inference Machine (Putzky & Welling 2017) of the MagNet paper.

Built on :mod:`lensinv` (never the other way round): torch sparse physics
(:mod:`rim.physics`), the model (:mod:`rim.model`), data (:mod:`rim.data`) and
the training loop (:mod:`rim.train`, used by ``scripts/train_rim.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .model import RIM, RIMConfig
from .physics import BatchedOperator

WEIGHTS = Path(__file__).resolve().parent / "weights" / "rim_realistic.pt"

__all__ = ["RIM", "RIMConfig", "BatchedOperator", "load_pretrained", "WEIGHTS"]


def load_pretrained(path: Optional[Union[str, Path]] = None, device: str = "cpu") -> RIM:
    """Load the shipped weights (``path=None``) or any checkpoint written by ``scripts/train_rim.py``.

    Returns the model in eval mode on ``device``; ``model.reconstruct(op, image, sigma)``
    reconstructs one lens. Raises ValueError for a missing or foreign file, or
    weights that do not fit the architecture recorded with them.
    """
    from .train import load_checkpoint

    path = WEIGHTS if path is None else Path(path)
    ck = load_checkpoint(path)
    try:
        config = RIMConfig(**ck["model_config"])
        model = RIM(config)
        model.load_state_dict(ck["model"])
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: the weights do not match the recorded architecture ({exc})") from exc
    return model.to(device).eval()
