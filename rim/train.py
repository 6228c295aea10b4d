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
import pickle
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from lensinv.io import atomic_path, write_text_atomic

from .data import FileDataset, StepBatches, StreamDataset, collate, to_device
from .model import RIM, RIMConfig, data_scale
from .physics import BatchedVisibilityOperator

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (recorded in every checkpoint); invalid values raise ValueError naming the field.

    Parameters
    ----------
    preset : str
        Observation preset for generated data (``realistic``, ``magnet``, ``galaxies``: real
        galaxies of the training split mixed with procedural sources, or ``alma``: those sources
        observed as ALMA-like visibilities; presets drawing validation galaxies are refused).
    data : str or None
        HDF5 data set(s) (comma-separated) made by build_operators.py; None
        streams freshly simulated lenses.
    seed : int
        Seed of the simulated stream and of the model initialisation (>= 0).
    batch : int
        Lenses per step per process (>= 1).
    steps : int
        Total optimisation steps (>= 1).
    lr : float
        Initial learning rate of Adam (finite, > 0).
    decay_steps, decay_rate : float
        ``lr(step) = lr * decay_rate ** (step / decay_steps)`` (the seed: 5000, 0.96);
        ``decay_steps`` finite > 0 (steps), ``decay_rate`` in (0, 1].
    clip : float
        Gradient-norm clipping threshold (finite, > 0).
    checkpoint_every, val_every, log_every : int
        Intervals in steps (>= 1).
    val_lenses : int
        Held-out lenses (a separate seed stream) for validation RMSE (>= 0).
    workers : int
        DataLoader worker processes (operators are built there; >= 0).
    amp : bool
        bfloat16 autocast for the network on CUDA (physics stays float32).
    model : RIMConfig
    init : str or None
        Weights to start from (a checkpoint or exported weights of the same architecture, e.g. the
        shipped ones), with a fresh optimiser; None starts from a random initialisation.
    normalize : bool
        Divide each lens's image, sigma and true source by :func:`rim.model.data_scale` of its image
        before the network sees it, exactly as :meth:`RIM.reconstruct` does at inference (the loss
        is then in the normalised unit). Runs made before this setting existed trained without it
        (their checkpoints resume with ``normalize=False``).
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
    init: Optional[str] = None
    normalize: bool = True

    def __post_init__(self) -> None:
        from lensinv.simulate import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.data is not None and (not isinstance(self.data, str) or not self.data.strip()):
            raise ValueError(f"data must be None or a non-empty comma-separated list of files, got {self.data!r}")
        minimum = {"seed": 0, "batch": 1, "steps": 1, "checkpoint_every": 1, "val_every": 1, "log_every": 1,
                   "val_lenses": 0, "workers": 0}
        for name, low in minimum.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
            object.__setattr__(self, name, int(v))  # plain int: checkpoints hold no numpy scalars
        for name in ("lr", "decay_steps", "clip", "decay_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ValueError(f"{name} must be a number, got {v!r}")
            object.__setattr__(self, name, float(v))
            v = float(v)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if self.decay_rate > 1:
            raise ValueError(f"decay_rate must be in (0, 1], got {self.decay_rate!r}")
        for name in ("amp", "normalize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.model, RIMConfig):
            raise ValueError(f"model must be a RIMConfig, got {type(self.model).__name__}")
        if self.init is not None and (not isinstance(self.init, str) or not self.init.strip()):
            raise ValueError(f"init must be None or a weights file, got {self.init!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# Settings that may change when a run is resumed: applied from the resumed step on and recorded in the
# checkpoint's ``"changes"`` (the others must match the checkpoint: they define the model and its data).
RESUMABLE_CHANGES = ("lr", "decay_steps", "decay_rate", "clip", "amp")


VAL_SEED_OFFSET = 1_000_003  # validation lenses come from seed + this: never seen in training


def _rng_state() -> dict:
    """The torch, numpy and Python RNG states as tensors and plain lists (loadable with ``weights_only=True``)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": [int(version), [int(v) for v in internal], gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    if isinstance(npst, dict):
        key = np.asarray(npst["key"].numpy() if torch.is_tensor(npst["key"]) else npst["key"]).astype(np.uint32)
        np.random.set_state((npst["name"], key, int(npst["pos"]), int(npst["has_gauss"]),
                             float(npst["cached_gaussian"])))
    else:  # checkpoints written before the states were stored as plain lists and tensors
        np.random.set_state(tuple(npst))
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _all_finite(tensors) -> bool:
    flags = [torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def save_checkpoint(path: Path, model: RIM, optimizer, scheduler, step: int, config: TrainConfig,
                    changes: Optional[list] = None) -> None:
    """Write a checkpoint atomically (temporary file, fsync, rename).

    Everything in it (state dicts, RNG states as tensors and lists, configs as dicts) loads with
    ``torch.load(weights_only=True)``. ``changes`` records settings changed on resume (see
    :func:`train`). Raises FloatingPointError, writing nothing, if a model parameter is NaN or inf:
    a diverged model never replaces a good checkpoint.
    """
    if not _all_finite(model.state_dict().values()):
        raise FloatingPointError(f"not writing {path}: the model has NaN or inf parameters at step {step}")
    _atomic_torch_save({"format": CHECKPOINT_FORMAT, "step": step, "model": model.state_dict(),
                        "model_config": config.model.to_dict(), "train_config": config.to_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": _rng_state(), "changes": list(changes or [])}, Path(path))


def _atomic_torch_save(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, fsync, then rename: a reader never sees a partial file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _numpy_safe_globals() -> list:
    """The numpy array reconstructors (data only, no code) that checkpoints written before the RNG
    states were stored as tensors need; allowed in addition to torch's own ``weights_only`` set."""
    core = getattr(np, "_core", None) or np.core
    names = [np.ndarray, np.dtype, core.multiarray._reconstruct, type(np.dtype(np.uint32))]
    return names


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (or exported weights).

    The file is read with ``torch.load(weights_only=True)``: tensors, plain Python containers and
    numbers, and numpy arrays only, so a crafted file cannot run code when it is loaded.

    Raises
    ------
    ValueError
        If ``path`` is missing or a directory, is not a readable checkpoint, or holds objects other
        than tensors, containers and numbers (a pickle that would execute code is refused).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[-1] if first else "")
        raise ValueError(f"{path} is not a safe checkpoint: it holds objects other than tensors and plain data, "
                         f"which are not loaded because unpickling them could execute code ({detail})") from exc
    except Exception as exc:  # truncated or foreign file
        raise ValueError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT or "model" not in ck:
        raise ValueError(f"{path} is not a lensinv RIM checkpoint")
    return ck


def _simulation_config(preset: str):
    from lensinv.simulate import training_config

    return training_config(preset)  # refuses presets that draw validation galaxies


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _schedule(config: TrainConfig) -> Callable[[int], float]:
    return lambda step: config.decay_rate ** (step / config.decay_steps)


def normalised(src: torch.Tensor, img: torch.Tensor, sig: torch.Tensor, normalize: bool,
               visibilities: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(src / k, img / k, sig / k, k)`` with ``k = data_scale(img, visibilities)`` per lens
    (``(B,)``; ``img`` the dirty images for visibilities), or the inputs and ``k = 1`` when
    ``normalize`` is False. ``sig`` is ``(B,)`` or ``(B, n, n)``."""
    k = (data_scale(img, visibilities) if normalize
         else torch.ones(img.shape[0], dtype=img.dtype, device=img.device))
    kk = k[:, None, None]
    return src / kk, img / kk, sig / (kk if sig.dim() == 3 else k), k


def validate(model: RIM, batches: list[dict], device, normalize: bool = True) -> float:
    """Median per-lens RMSE of the final estimate (in the sources' own unit) on the validation
    batches, with the data normalised as in training (``normalize``)."""
    rmses = []
    was = model.training
    model.eval()
    with torch.no_grad():
        for b in batches:
            src, img, sig, op = to_device(b, model.config.image_n, model.config.source_n, device)
            _, img_n, sig_n, k = normalised(src, img, sig, normalize, isinstance(op, BatchedVisibilityOperator))
            est = model(img_n, op, sig_n)[-1] * k[:, None, None]
            rmses.extend(((est - src) ** 2).mean(dim=(1, 2)).sqrt().tolist())
    model.train(was)
    return float(np.median(rmses))


def train(config: TrainConfig, out: Path, device: str = "cpu", resume: bool = False,
          progress: Optional[Callable[[int, float], None]] = None,
          stop: Optional[Callable[[], bool]] = None) -> list[float]:
    """Train (or resume training) a RIM; returns this run's training losses per step.

    Writes ``out/checkpoint.pt`` (every ``checkpoint_every`` steps, at the end, and where
    ``stop()``, asked after every step, returns True: the run then ends there, e.g. on a signal,
    and ``resume`` continues from that step), ``out/log.csv`` and, where the ``tensorboard`` package is installed,
    TensorBoard events under ``out/tb``. With ``resume``, continues from
    ``out/checkpoint.pt`` exactly where it stopped (same data, same state);
    a checkpoint made with another model or data configuration is refused.

    On resume, the optimisation settings in :data:`RESUMABLE_CHANGES` (``lr``,
    ``decay_steps``, ``decay_rate``, ``clip``, ``amp``) may differ from the
    checkpoint's: the new values apply from the resumed step on (the learning
    rate becomes ``lr * decay_rate ** (step / decay_steps)`` with the new
    values), a warning is logged, and each change is appended to the
    checkpoint's ``"changes"`` list as ``{"step", "setting", "old", "new"}``.

    Raises
    ------
    ValueError
        ``out`` exists and is not a directory; ``resume`` without
        ``out/checkpoint.pt``; a checkpoint without ``resume``; a checkpoint
        already at or beyond ``config.steps`` (nothing to do); another model or
        data configuration; an unavailable ``device``.
    FloatingPointError
        The loss, the gradient norm or the updated parameters became NaN or
        inf; the update is not checkpointed (the last checkpoint stays intact).
    """
    from . import resolve_device

    out = Path(out)
    dev = resolve_device(device)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {out} exists and is not a directory (the run folder)")
    ckpt_path = out / "checkpoint.pt"
    start = 0
    ck = None
    changes: list = []
    if resume:
        if not ckpt_path.exists():
            raise ValueError(f"resume: there is no checkpoint {ckpt_path} to continue (drop --resume to start afresh)")
        ck = load_checkpoint(ckpt_path)
        if not isinstance(ck.get("train_config"), dict):
            raise ValueError(f"{ckpt_path} has no train_config: it is exported weights, not a training checkpoint")
        old = dict(ck["train_config"])
        old.setdefault("normalize", False)  # runs from before the setting trained on raw data
        mine = config.to_dict()
        keys = ("model", "preset", "data", "seed", "batch", "normalize")
        if any(old.get(k) != mine.get(k) for k in keys):
            diff = [k for k in keys if old.get(k) != mine.get(k)]
            hint = (" (the checkpoint's run trained on un-normalised data: resume it with --no-normalize)"
                    if diff == ["normalize"] and not old["normalize"] else "")
            raise ValueError(f"checkpoint {ckpt_path} was made with another configuration ({', '.join(diff)} "
                             f"differ){hint}")
        start = int(ck["step"])
        if start >= config.steps:
            raise ValueError(f"steps: the checkpoint {ckpt_path} is already at step {start} >= steps {config.steps}: "
                             f"nothing to do (pass a larger --steps to train further)")
        changes = list(ck.get("changes", []))
        for k in RESUMABLE_CHANGES:
            if k in old and old[k] != mine[k]:
                log.warning("resuming at step %d with %s = %r (the checkpoint's run used %r): the new value applies "
                            "from this step on", start, k, mine[k], old[k])
                changes.append({"step": start, "setting": k, "old": old[k], "new": mine[k]})
    elif ckpt_path.exists():
        raise ValueError(f"{ckpt_path} exists: pass resume=True (--resume) to continue it, or choose another --out")
    rank, world = _distributed()
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(dev)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    model = RIM(config.model).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    if ck is None and config.init is not None:
        _load_initial_weights(model, Path(config.init), config.model)
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        if any(c["step"] == start for c in changes):  # apply a new lr / schedule from this step on
            scheduler.base_lrs = [config.lr for _ in optimizer.param_groups]
            for g in optimizer.param_groups:
                g["initial_lr"] = config.lr
                g["lr"] = config.lr * _schedule(config)(start)
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    # the preset's simulation (its source model may load the real-galaxy file): only where lenses are simulated
    sim_config = _simulation_config(config.preset) if not config.data or config.val_lenses > 0 else None
    if config.data:
        dataset = FileDataset(config.data.split(","))
        from lensinv.simulate import uses_validation_galaxies

        if uses_validation_galaxies(dataset.ds.config):
            raise ValueError(f"the data {config.data} were made from validation galaxies, which are never trained on")
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
            src, img, sig, _ = normalised(src, img, sig, config.normalize, isinstance(op, BatchedVisibilityOperator))
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
                ests = net(img, op, sig)
                loss = sum(((e.float() - src) ** 2).sum(dim=(1, 2)).mean() for e in ests)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss became {value} at step {step + 1}; not updating "
                                         f"(the last checkpoint is intact)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip))
            if not math.isfinite(norm):
                raise FloatingPointError(f"the gradient norm became {norm} at step {step + 1}; not updating "
                                         f"(the last checkpoint is intact)")
            optimizer.step()
            if not _all_finite(model.parameters()):
                raise FloatingPointError(f"the update of step {step + 1} made parameters NaN or inf (learning rate "
                                         f"too large?); not checkpointed (the last checkpoint is intact)")
            scheduler.step()
            step += 1
            losses.append(value)
            n_last += config.batch * world
            if progress is not None and rank == 0:
                progress(step, value)
            val = math.nan
            if rank == 0 and val_batches and (step % config.val_every == 0 or step == config.steps):
                val = validate(model, val_batches, dev, config.normalize)
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
            stopping = stop is not None and stop()
            if stop is not None and world > 1:  # every process stops at the same step
                flag = torch.tensor([float(stopping)], device=dev)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stopping = bool(flag.item())
            if rank == 0 and (step % config.checkpoint_every == 0 or step == config.steps or stopping):
                save_checkpoint(ckpt_path, model, optimizer, scheduler, step, config, changes)
            if stopping:
                log.info("stopped at step %d (checkpointed): continue with resume", step)
                break
    finally:
        if csv_file:
            csv_file.close()
        if writer is not None:
            writer.close()
        if world > 1 and dist.is_initialized():
            dist.barrier()
    return losses


def _load_initial_weights(model: RIM, path: Path, expected: RIMConfig) -> None:
    """Start ``model`` from the weights in ``path`` (``init``); their architecture must be ``expected``."""
    w = load_checkpoint(path)
    if w.get("model_config") != expected.to_dict():
        raise ValueError(f"init: {path} holds a model of another architecture ({w.get('model_config')}) than this "
                         f"run's ({expected.to_dict()}): pass the matching --rim-steps/--embed/--hidden1/--hidden2")
    model.load_state_dict(w["model"])
    log.info("starting from the weights in %s (step %s of their run)", path, w.get("step"))


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
             f"(preset `{tc['preset']}`, seed {tc['seed']}"
             f"{', starting from ' + tc['init'] if tc.get('init') else ''})",
             f"- architecture: `{json.dumps(ck['model_config'])}`",
             f"- data normalised per lens by rim.model.data_scale in training: "
             f"{'yes' if tc.get('normalize', False) else 'no'}"]
    if metrics:
        lines.append(f"- metrics: `{json.dumps(metrics)}`")
    if notes:
        lines += ["", notes]
    write_text_atomic(dest.with_suffix(dest.suffix + ".md"), "\n".join(lines) + "\n")
    return dest


#: the parts of a checkpoint that :func:`split_checkpoint` writes to ``optimizer.pt``
_OPTIMIZER_PARTS = ("optimizer",)


def split_checkpoint(checkpoint: Path, folder: Path) -> tuple[Path, Path]:
    """Write a training checkpoint as two smaller files in ``folder``: ``weights.pt`` (everything but
    the optimiser state: model, configs, step, scheduler, RNG states, changes; ``load_pretrained``
    reads it) and ``optimizer.pt`` (the Adam moments), each written atomically and loadable with
    ``torch.load(weights_only=True)``. For machines that return files of limited size (a seed-size
    model's checkpoint is ~21 MB, its parts ~7 and ~14 MB); :func:`join_checkpoint` reverses it."""
    ck = load_checkpoint(checkpoint)
    if any(k not in ck for k in _OPTIMIZER_PARTS):
        raise ValueError(f"{checkpoint} holds no optimiser state (exported weights?): nothing to split")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights, optim = folder / "weights.pt", folder / "optimizer.pt"
    _atomic_torch_save({k: v for k, v in ck.items() if k not in _OPTIMIZER_PARTS}, weights)
    _atomic_torch_save({"format": CHECKPOINT_FORMAT, "step": ck["step"], "model": {},
                        **{k: ck[k] for k in _OPTIMIZER_PARTS}}, optim)
    return weights, optim


def join_checkpoint(folder: Path, checkpoint: Path) -> Path:
    """The checkpoint that :func:`split_checkpoint` split into ``folder``, written atomically to
    ``checkpoint`` (resumable with ``train_rim.py --resume``). Refuses parts of different steps."""
    folder = Path(folder)
    weights, optim = load_checkpoint(folder / "weights.pt"), load_checkpoint(folder / "optimizer.pt")
    if weights["step"] != optim["step"]:
        raise ValueError(f"{folder}: weights.pt is at step {weights['step']} but optimizer.pt at step {optim['step']}")
    _atomic_torch_save({**weights, **{k: optim[k] for k in _OPTIMIZER_PARTS}}, Path(checkpoint))
    return Path(checkpoint)
