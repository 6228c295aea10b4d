"""The Recurrent Inference Machine (Putzky & Welling 2017) of the MagNet paper, with ConvGRU cells.

Each of ``steps`` iterations stacks the current source estimate and the
likelihood gradient, embeds them with a 5x5 convolution (32 channels,
linear), runs a ConvGRU (5x5, 128 channels), a transposed convolution back to
32 channels (linear), a second ConvGRU (5x5), and a final 5x5 convolution to
one channel that is added to the estimate.

Choices where the seed is silent (all configurable in :class:`RIMConfig`):

- Putzky's layout: the embedding convolution has stride 2 (64 -> 32 pixels)
  and the transposed convolution upsamples back, so the 128-channel GRU runs
  at half resolution (``downsample=True``).
- The second GRU has 32 channels (``hidden2``).
- The gradient fed to the network is ``A^T (A s - d) / sigma^2`` divided by
  its root-mean-square over each lens's source grid: its scale varies by
  ~400x over S/N 10-200, and the normalisation lets one network serve all.
- The gradient is an input, not differentiated through (``s`` is detached
  when it is computed), as in Putzky's code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .physics import BatchedOperator


@dataclass(frozen=True)
class RIMConfig:
    """Architecture of the RIM.

    Parameters
    ----------
    steps : int
        Unrolled iterations T.
    embed : int
        Channels of the embedding and of the transposed convolution.
    hidden1, hidden2 : int
        Channels of the first and second ConvGRU.
    kernel : int
        Convolution size (odd).
    downsample : bool
        Stride-2 embedding with the first GRU at half resolution.
    source_n, image_n : int
        Grid sides (the source grid must be even when downsampling).
    """

    steps: int = 10
    embed: int = 32
    hidden1: int = 128
    hidden2: int = 32
    kernel: int = 5
    downsample: bool = True
    source_n: int = 64
    image_n: int = 192

    def __post_init__(self) -> None:
        for name in ("steps", "embed", "hidden1", "hidden2", "kernel", "source_n", "image_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel}")
        if self.downsample and self.source_n % 2:
            raise ValueError(f"source_n must be even to downsample, got {self.source_n}")

    def to_dict(self) -> dict:
        return asdict(self)


class ConvGRUCell(nn.Module):
    """Convolutional GRU: gates and candidate from convolutions of ``[x, h]``."""

    def __init__(self, in_ch: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(in_ch + hidden, 2 * hidden, kernel, padding=kernel // 2)
        self.cand = nn.Conv2d(in_ch + hidden, hidden, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        n = torch.tanh(self.cand(torch.cat([x, r * h], dim=1)))
        return (1 - z) * h + z * n


class RIM(nn.Module):
    """The MagNet RIM. ``forward(image, op, sigma)`` returns the estimate after every step."""

    def __init__(self, config: RIMConfig = RIMConfig()) -> None:
        super().__init__()
        self.config = config
        c, k = config, config.kernel
        stride = 2 if c.downsample else 1
        self.embed = nn.Conv2d(2, c.embed, k, stride=stride, padding=k // 2)
        self.gru1 = ConvGRUCell(c.embed, c.hidden1, k)
        if c.downsample:
            self.up = nn.ConvTranspose2d(c.hidden1, c.embed, 4, stride=2, padding=1)
        else:
            self.up = nn.ConvTranspose2d(c.hidden1, c.embed, k, stride=1, padding=k // 2)
        self.gru2 = ConvGRUCell(c.embed, c.hidden2, k)
        self.out = nn.Conv2d(c.hidden2, 1, k, padding=k // 2)

    def forward(self, image: torch.Tensor, op: BatchedOperator, sigma: torch.Tensor,
                init: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """Run the unrolled RIM.

        Parameters
        ----------
        image : Tensor
            ``(B, n_img, n_img)`` observed images.
        op : BatchedOperator
            The batch's operators.
        sigma : Tensor
            ``(B,)`` or ``(B, n_img, n_img)`` noise levels (> 0).
        init : Tensor, optional
            Starting estimate ``(B, n_src, n_src)`` (default zeros).

        Returns
        -------
        list of Tensor
            The ``T`` estimates ``(B, n_src, n_src)``.
        """
        c = self.config
        b, n = image.shape[0], c.source_n
        if tuple(image.shape[1:]) != (c.image_n, c.image_n) or op.source_n != n or op.batch != b:
            raise ValueError(f"image {tuple(image.shape)} and operator (batch {op.batch}, source {op.source_n}) do not "
                             f"match the model (image {c.image_n}, source {n})")
        dev = next(self.parameters()).device
        s = torch.zeros(b, n, n, device=dev) if init is None else init
        m = n // 2 if c.downsample else n
        h1 = torch.zeros(b, c.hidden1, m, m, device=dev)
        h2 = torch.zeros(b, c.hidden2, n, n, device=dev)
        out = []
        for _ in range(c.steps):
            with torch.no_grad(), torch.autocast(device_type=dev.type, enabled=False):
                g = op.chi2_gradient(s.detach().float(), image.float(), sigma.float())
                g = g / (g.pow(2).mean(dim=(1, 2), keepdim=True).sqrt() + 1e-12)
            x = torch.stack([s, g.to(s.dtype)], dim=1)
            h1 = self.gru1(self.embed(x), h1)
            h2 = self.gru2(self.up(h1), h2)
            s = s + self.out(h2)[:, 0]
            out.append(s)
        return out

    @torch.no_grad()
    def reconstruct(self, op: Any, image: np.ndarray, sigma: Any) -> np.ndarray:
        """Reconstruct one lens: ``op`` a :class:`lensinv.LensOperator`, numpy image and sigma in,
        2-D numpy source (float64) out, on the model's device."""
        from lensinv import LensOperator

        if not isinstance(op, LensOperator):
            raise ValueError(f"op must be a lensinv.LensOperator, got {type(op).__name__}")
        c = self.config
        if (op.image_grid.n, op.source_grid.n) != (c.image_n, c.source_n):
            raise ValueError(f"the operator's grids ({op.image_grid.n}, {op.source_grid.n}) do not match the model's "
                             f"({c.image_n}, {c.source_n})")
        img = np.asarray(image, dtype=np.float64)
        if img.shape != (c.image_n, c.image_n):
            raise ValueError(f"image must have shape ({c.image_n}, {c.image_n}), got {img.shape}")
        if not np.all(np.isfinite(img)):
            raise ValueError("image contains NaN or inf values")
        sig = np.asarray(sigma, dtype=np.float64)
        if not np.all(np.isfinite(sig)) or np.any(sig <= 0) or sig.shape not in ((), img.shape):
            raise ValueError("sigma must be a finite scalar or image-shaped map, > 0")
        dev = next(self.parameters()).device
        was_training = self.training
        self.eval()
        bop = BatchedOperator.from_scipy([op.L], c.image_n, c.source_n, device=dev, psfs=[op.psf])
        sig_t = torch.as_tensor(sig, dtype=torch.float32, device=dev).reshape((1,) + sig.shape)
        est = self(torch.as_tensor(img, dtype=torch.float32, device=dev)[None], bop, sig_t)[-1]
        self.train(was_training)
        return est[0].double().cpu().numpy()
