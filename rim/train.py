"""Training loop of the RIM: Adam, exponential learning-rate decay, gradient clipping, mixed
precision on GPU, atomic checkpoints with optimiser, scheduler and RNG states, exact resume,
CSV/TensorBoard logs, and data parallelism through torchrun / DistributedDataParallel.

Loss: the squared error of the estimate summed over pixels and over every
time step (the seed's), averaged over the lenses of a batch.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from lensinv.io import atomic_path

from .data import FileDataset, StepBatches, StreamDataset, collate, to_device
from .model import RIM, RIMConfig

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (recorded in every checkpoint).

    Parameters
    ----------
    preset : str
        Observation preset for generated data (``realistic`` or ``magnet``).
    data : str or None
        HDF5 data set(s) (comma-separated) made by build_operators.py; None
        streams freshly simulated lenses.
    seed : int
        Seed of the simulated stream and of the model initialisation.
    batch : int
        Lenses per step per process.
    steps : int
        Total optimisation steps.
    lr : float
        Initial learning rate of Adam.
    decay_steps, decay_rate : float
        ``lr(step) = lr * decay_rate ** (step / decay_steps)`` (the seed: 5000, 0.96).
    clip : float
        Gradient-norm clipping threshold.
    checkpoint_every, val_every, log_every : int
        Intervals in steps.
    val_lenses : int
        Held-out lenses (a separate seed stream) for validation RMSE.
    workers : int
        DataLoader worker processes (operators are built there).
    amp : bool
        bfloat16 autocast for the network on CUDA (physics stays float32).
    model : RIMConfig
    """

    preset: str = "realistic"
    data: Optional[str] = None
    seed: int = 0
    batch: int = 8
    steps: int = 100000
    lr: float = 1e-4
    decay_steps: float = 5000.0
    decay_rate: float = 0.96
    clip: float = 5.0
    checkpoint_every: int = 500
    val_every: int = 500
    log_every: int = 10
    val_lenses: int = 32
    workers: int = 2
    amp: bool = True
    model: RIMConfig = field(default_factory=RIMConfig)

    def to_dict(self) -> dict:
        return asdict(self)


VAL_SEED_OFFSET = 1_000_003  # validation lenses come from seed + this: never seen in training


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: RIM, optimizer, scheduler, step: int, config: TrainConfig) -> None:
    """Write a checkpoint atomically (temporary file, fsync, rename)."""
    _atomic_torch_save({"format": CHECKPOINT_FORMAT, "step": step, "model": model.state_dict(),
                        "model_config": config.model.to_dict(), "train_config": config.to_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": _rng_state()}, Path(path))


def _atomic_torch_save(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, fsync, then rename: a reader never sees a partial file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; raises ValueError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or foreign file
        raise ValueError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT or "model" not in ck:
        raise ValueError(f"{path} is not a lensinv RIM checkpoint")
    return ck


def _simulation_config(preset: str):
    from lensinv.simulate import PRESETS, SimulationConfig

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return SimulationConfig(preset=PRESETS[preset])


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _schedule(config: TrainConfig) -> Callable[[int], float]:
    return lambda step: config.decay_rate ** (step / config.decay_steps)


def validate(model: RIM, batches: list[dict], device) -> float:
    """Median per-lens RMSE of the final estimate on the validation batches."""
    rmses = []
    was = model.training
    model.eval()
    with torch.no_grad():
        for b in batches:
            src, img, sig, op = to_device(b, model.config.image_n, model.config.source_n, device)
            est = model(img, op, sig)[-1]
            rmses.extend(((est - src) ** 2).mean(dim=(1, 2)).sqrt().tolist())
    model.train(was)
    return float(np.median(rmses))


def train(config: TrainConfig, out: Path, device: str = "cpu", resume: bool = False,
          progress: Optional[Callable[[int, float], None]] = None) -> list[float]:
    """Train (or resume training) a RIM; returns this run's training losses per step.

    Writes ``out/checkpoint.pt`` (every ``checkpoint_every`` steps and at the
    end), ``out/log.csv`` and, where the ``tensorboard`` package is installed,
    TensorBoard events under ``out/tb``. With ``resume``, continues from
    ``out/checkpoint.pt`` exactly where it stopped (same data, same state);
    a checkpoint made with another model or data configuration is refused.
    """
    out = Path(out)
    rank, world = _distributed()
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(dev)
    ckpt_path = out / "checkpoint.pt"
    start = 0
    ck = None
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        old = ck["train_config"]
        mine = config.to_dict()
        keys = ("model", "preset", "data", "seed", "batch")
        if any(old.get(k) != mine.get(k) for k in keys):
            diff = [k for k in keys if old.get(k) != mine.get(k)]
            raise ValueError(f"checkpoint {ckpt_path} was made with another configuration ({', '.join(diff)} differ)")
        start = int(ck["step"])
    elif ckpt_path.exists() and not resume:
        raise ValueError(f"{ckpt_path} exists: pass resume=True (--resume) to continue it, or choose another --out")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    model = RIM(config.model).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    sim_config = _simulation_config(config.preset)
    if config.data:
        dataset = FileDataset(config.data.split(","))
        grids = (dataset.ds.image_grid.n, dataset.ds.source_grid.n)
        if grids != (config.model.image_n, config.model.source_n):
            raise ValueError(f"the data's grids (image {grids[0]}, source {grids[1]}) do not match the model's "
                             f"(image {config.model.image_n}, source {config.model.source_n})")
        if dataset.ds.config["preset"]["name"] != config.preset:
            raise ValueError(f"the data were made with preset {dataset.ds.config['preset']['name']!r} but --preset is "
                             f"{config.preset!r} (validation lenses are simulated with --preset)")
        sampler = StepBatches(config.batch, start, rank, world, length=len(dataset), seed=config.seed)
    else:
        dataset = StreamDataset(config.seed, sim_config)
        sampler = StepBatches(config.batch, start, rank, world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.workers, persistent_workers=config.workers > 0,
                                         prefetch_factor=4 if config.workers > 0 else None,
                                         # Numba's OpenMP threads forbid fork(): workers are spawned
                                         multiprocessing_context="spawn" if config.workers > 0 else None)
    val_batches = []
    if rank == 0 and config.val_lenses > 0:
        val_ds = StreamDataset(config.seed + VAL_SEED_OFFSET, sim_config)
        idx = list(range(config.val_lenses))
        val_batches = [collate([val_ds[i] for i in idx[k:k + config.batch]]) for k in range(0, len(idx), config.batch)]

    writer = None
    if rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"), purge_step=start)
        except ImportError:
            log.info("tensorboard is not installed: logging to CSV only")
    log_path = out / "log.csv"
    new_log = not log_path.exists() or start == 0
    csv_file = open(log_path, "w" if new_log else "a", newline="") if rank == 0 else None
    csv_out = csv.writer(csv_file) if csv_file else None
    if csv_out and new_log:
        csv_out.writerow(["step", "loss", "lr", "val_rmse", "lenses_per_s"])
    use_amp = config.amp and dev.type == "cuda"
    losses: list[float] = []
    t_last, n_last = time.perf_counter(), 0
    step = start
    try:
        for batch in loader:
            if step >= config.steps:
                break
            src, img, sig, op = to_device(batch, config.model.image_n, config.model.source_n, dev)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
                ests = net(img, op, sig)
                loss = sum(((e.float() - src) ** 2).sum(dim=(1, 2)).mean() for e in ests)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer.step()
            scheduler.step()
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss became {value} at step {step}")
            losses.append(value)
            n_last += config.batch * world
            if progress is not None and rank == 0:
                progress(step, value)
            val = math.nan
            if rank == 0 and val_batches and (step % config.val_every == 0 or step == config.steps):
                val = validate(model, val_batches, dev)
            if rank == 0 and (step % config.log_every == 0 or not math.isnan(val) or step == config.steps):
                now = time.perf_counter()
                rate = n_last / max(now - t_last, 1e-9)
                t_last, n_last = now, 0
                lr = scheduler.get_last_lr()[0]
                csv_out.writerow([step, value, lr, val, rate])
                csv_file.flush()
                if writer is not None:
                    writer.add_scalar("train/loss", value, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/lenses_per_s", rate, step)
                    if not math.isnan(val):
                        writer.add_scalar("val/rmse", val, step)
            if rank == 0 and (step % config.checkpoint_every == 0 or step == config.steps):
                save_checkpoint(ckpt_path, model, optimizer, scheduler, step, config)
    finally:
        if csv_file:
            csv_file.close()
        if writer is not None:
            writer.close()
        if world > 1 and dist.is_initialized():
            dist.barrier()
    return losses


def export_weights(checkpoint: Path, dest: Path, notes: str = "", metrics: Optional[dict] = None) -> Path:
    """Write the model part of a training checkpoint (no optimiser state) to ``dest``, atomically,
    with a Markdown model card ``dest`` + ``.md`` next to it. ``load_pretrained(dest)`` reads it."""
    ck = load_checkpoint(checkpoint)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save({k: ck[k] for k in ("format", "step", "model", "model_config", "train_config")}, dest)
    tc = ck["train_config"]
    lines = ["# RIM weights (lensinv)", "",
             f"- file: `{dest.name}` ({dest.stat().st_size / 1e6:.1f} MB); load with `rim.load_pretrained()`",
             f"- training steps: {ck['step']} x batch {tc['batch']} lenses; Adam lr {tc['lr']} decaying "
             f"x{tc['decay_rate']} per {tc['decay_steps']:g} steps; gradient clipping {tc['clip']}",
             f"- data: {'files ' + tc['data'] if tc['data'] else 'a stream of freshly simulated lenses'} "
             f"(preset `{tc['preset']}`, procedural sources, seed {tc['seed']})",
             f"- architecture: `{json.dumps(ck['model_config'])}`"]
    if metrics:
        lines.append(f"- metrics: `{json.dumps(metrics)}`")
    if notes:
        lines += ["", notes]
    dest.with_suffix(dest.suffix + ".md").write_text("\n".join(lines) + "\n")
    return dest
