"""The trainer shared by the ``neurosim`` command, the demo and the models' examples.

One :class:`Trainer` handles classification (cross-entropy; accuracy) and regression/forecasting (MSE;
MSE, MAE, R2). Models take batch-first input and return ``[B, outputs]``; how they use time is their business.

Reproducibility: the split is fixed by ``seed``; each epoch's sample order is a permutation seeded by ``seed``
and the epoch (the one ``DistributedSampler`` would draw; no sampler is used), so a checkpoint only needs the
epoch, the step inside it, the RNG states and the partial metric sums to continue a killed run exactly.
Under torchrun the ranks share every global batch (``batch_size / world_size`` samples each; the last, smaller
batch as evenly as it goes, no sample twice), each rank's loss weighted by its share, so that the gradients
DistributedDataParallel averages are those of one process; metrics are summed over ranks, and only rank 0
writes files.
"""
from __future__ import annotations

import dataclasses
import errno
import gc
import math
import os
import random
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm.auto import tqdm

from .. import validate
from . import checkpoint as ckpt_io
from . import distributed as D
from . import logs
from .config import IDENTITY_FIELDS, ConfigError, TrainConfig
from .data import DataInfo, split_indices
from .metrics import FIELDS, MetricSums, metric_names
from .registry import get_dataset, get_model

# a run before checkpoint format 3 trained with encoder "latency" that is "latency_log" now (registry.upgrade_config)
LATENCY_RENAME = ("encoder", "latency_log", "latency")
RENAMED_LATENCY = (" (this run's 'latency' code, from before checkpoint format 3, is called 'latency_log' now: "
                   "resume with --encoder latency_log, or with --resume and no --encoder)")

Callback = Callable[[str, "Trainer"], None]


class NonFiniteLoss(RuntimeError):
    """The training or validation loss became NaN or infinite (a diverged run, or NaN/inf values in the data)."""


class RunExists(ConfigError):
    """``out_dir`` holds an earlier run's outputs (``files``, relative to it) and :meth:`Trainer.fit` was asked
    neither to resume that run nor to overwrite it."""

    def __init__(self, out_dir, files):
        self.out_dir, self.files = str(out_dir), list(files)
        super().__init__(self.advice())

    def __reduce__(self):  # (rank 0 sends it to the other ranks)
        return RunExists, (self.out_dir, self.files)

    def advice(self, resume: str | None = "resume=True", overwrite: str = "overwrite=True",
               out_dir: str = "out_dir") -> str:
        """The message, naming the caller's options (the command line's are its flags; ``resume`` None: none)."""
        shown = ", ".join(self.files[:3]) + (f" and {len(self.files) - 3} more" if len(self.files) > 3 else "")
        ways = ([f"{resume} to continue it"] if resume else []) + [f"{overwrite} to replace it"]
        return f"{self.out_dir} already holds a run ({shown}); pass {', '.join(ways)}, or another {out_dir}"


def seed_layer_generators(model: nn.Module, seed: int, rank: int) -> None:
    """Layers with their own seeded generator (random spike masks) draw a stream of the run's ``seed`` and the
    process's ``rank`` too, as the global RNG does: before, every training seed and every rank drew the same masks.
    Seed 0 on rank 0 keeps the layer's own seed."""
    for m in ckpt_io.layer_generators(model).values():
        if getattr(m, "seed", None) is not None:
            m.reseed(m.seed + 1_000_003 * seed + 7_919 * rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Build the dataset and model named in ``cfg`` and train them; :meth:`fit` returns the summary dict.

    ``callbacks``: functions ``cb(event, trainer)`` called with ``"step_end"`` after every optimizer step and
    ``"epoch_end"`` after every epoch (on every rank); ``trainer.epoch``, ``trainer.step_in_epoch`` and
    ``trainer.global_step`` say where the run is.
    """

    def __init__(self, cfg: TrainConfig, callbacks: Iterable[Callback] = ()):
        self.cfg = cfg.validate()
        self.callbacks = list(callbacks)
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.paths = {
            "summary": self.out_dir / "summary.json",
            "config": self.out_dir / "config.json",
            "csv_log": self.out_dir / "log.csv",
            "tensorboard": self.out_dir / "tb",
            "loss_curve": self.out_dir / "loss_curve.png",
            "best_checkpoint": self.ckpt_dir / "best.pt",
            "last_checkpoint": self.ckpt_dir / "last.pt",
            "prediction_plot": self.out_dir / "prediction.png",    # (forecasting runs with plots only)
        }
        self.dist = D.DistInfo()        # (until _setup joins a process group, if torchrun started this process)
        self.model = self.ddp = None
        self.nothing_to_train = None    # (why a resumed fit() had no epoch left to train)

    # ---- set-up ---------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        self.dist, self.device = D.setup(cfg.device)
        if self.device.type == "cpu" and cfg.cpu_threads:  # (set back when fit() returns: a process-wide setting)
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(cfg.cpu_threads)
        world = self.dist.world_size
        if cfg.batch_size % world:
            raise ConfigError(f"batch_size must be a multiple of the number of processes ({world}), "
                              f"got {cfg.batch_size}")
        self.local_batch = cfg.batch_size // world

        try:
            self.info: DataInfo = get_dataset(cfg.dataset)(cfg)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if self.info.train_indices is not None and self.info.val_indices is not None:
            self.train_idx, self.val_idx = list(self.info.train_indices), list(self.info.val_indices)
        else:
            self.train_idx, self.val_idx = split_indices(len(self.info.dataset), cfg.val_fraction, cfg.seed)
        self.task = self.info.task
        self.elements_per_sample = self.info.num_outputs if self.task == "regression" else 1
        self._check_labels()

        seed_everything(cfg.seed)                       # identical initial weights on every rank
        try:
            model = get_model(cfg.model)(self.info, cfg)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if not isinstance(model, nn.Module):
            raise ValueError(f"model builder {cfg.model!r} returned {type(model).__name__}, not an nn.Module")
        self.model = model.to(self.device)
        self._check_encoding()
        seed_everything(cfg.seed + self.dist.rank)      # per-rank stream for encoders / dropout
        seed_layer_generators(self.model, cfg.seed, self.dist.rank)
        if self.dist.enabled:
            ids = [self.device] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience)
        self.loss_fn = nn.CrossEntropyLoss() if self.task == "classification" else nn.MSELoss()
        self.train_set = Subset(self.info.dataset, self.train_idx)
        self.steps_per_epoch = math.ceil(len(self.train_idx) / cfg.batch_size)

        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_val = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.stopped_early = False
        self.history: list[dict] = []
        self.train_time = 0.0
        self.train_samples = 0
        self.sums = MetricSums(self.device)

    def _check_labels(self) -> None:
        """A classification dataset's integer labels are class indices below its num_outputs (else cross-entropy
        fails at the first batch holding one: an IndexError on CPU, a device-side assert on CUDA), found before any
        directory is made. A TensorDataset's label tensor is read directly; another dataset is read once."""
        if self.task != "classification":
            return
        data = self.info.dataset
        if isinstance(data, TensorDataset):
            labels = data.tensors[1]
        else:
            labels = [torch.as_tensor(data[i][1]) for i in range(len(data))]
            labels = torch.stack(labels) if labels and all(t.ndim == 0 for t in labels) else torch.zeros(0)
        if labels.is_floating_point() or labels.ndim != 1 or not labels.numel():
            return   # (no class indices: soft targets, class probabilities per sample)
        lo, hi, n = int(labels.min()), int(labels.max()), self.info.num_outputs
        if lo < 0 or hi >= n:
            raise ConfigError(f"dataset {self.cfg.dataset!r} has class labels from {lo} to {hi}, but its num_outputs "
                              f"is {n}: the labels must lie in 0..{n - 1} (one model output per class)")

    def _check_encoding(self) -> None:
        """The model's encoder takes this dataset's samples (a rate encoder needs values in [0, 1]; a forecasting
        series is not), found before any directory is made or step taken. (Called before the per-rank seeding: the
        random numbers an encoder draws here change no stream training uses.)"""
        if not hasattr(self.model, "encode") or not len(self.train_idx):
            return
        x = self.info.dataset[self.train_idx[0]][0]
        try:
            with torch.no_grad():
                self.model.encode(torch.as_tensor(x).unsqueeze(0).to(self.device))
        except ValueError as err:
            raise ConfigError(f"encoder {self.cfg.encoder!r} cannot encode the samples of dataset "
                              f"{self.cfg.dataset!r}: {err}") from None

    # ---- checkpoints ------------------------------------------------------------------------------------------
    # the fields of a checkpoint's "trainer" section that _resume reads (_state writes these and "world_size")
    RESUMED = ("best_val", "best_epoch", "bad_epochs", "stopped_early", "history", "train_sums", "train_time",
               "train_samples")

    def _state(self, sums: list[torch.Tensor]) -> dict:
        return {"best_val": self.best_val, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped_early": self.stopped_early, "history": self.history, "train_sums": sums,
                "world_size": self.dist.world_size, "train_time": self.train_time,
                "train_samples": self.train_samples}

    def _save(self, which: Iterable[str]) -> None:
        # every rank's RNG states and partial metric sums, in rank order (collective: all ranks call it)
        states = D.gather_objects((ckpt_io.rng_state(self.device, self.model), self.sums.state.cpu()), self.dist)
        if not self.dist.is_main:
            return
        rngs, sums = (list(s) for s in zip(*states))
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "epoch": self.epoch,
                   "step_in_epoch": self.step_in_epoch, "global_step": self.global_step, "rng": rngs,
                   "config": self.cfg.to_dict(), "trainer": self._state(sums)}
        for name in which:
            ckpt_io.save(self.paths[f"{name}_checkpoint"], payload)

    def _resume(self, path) -> None:
        ck = ckpt_io.load(path, map_location="cpu")
        diff = [f"{k}: checkpoint {ck['config'].get(k)!r} vs now {getattr(self.cfg, k)!r}"
                + (RENAMED_LATENCY if (k, ck["config"].get(k), getattr(self.cfg, k)) == LATENCY_RENAME else "")
                for k in IDENTITY_FIELDS if ck["config"].get(k) != getattr(self.cfg, k)]
        if diff:
            raise ckpt_io.CheckpointError(f"checkpoint {str(path)!r} was written by a different run ("
                                          + "; ".join(diff) + ")")
        # Check everything before changing anything, so a bad file leaves the trainer untouched.
        ckpt_io.check_state_dict(path, "model", ck["model"], self.model.state_dict())
        ckpt_io.check_neuron_values(path, self.model, ck["model"])
        saved_groups = ck["optimizer"].get("param_groups", [])
        groups = self.optimizer.state_dict()["param_groups"]
        if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in groups]:
            raise ckpt_io.CheckpointError(f"checkpoint {str(path)!r} holds an optimizer for other parameters")
        ckpt_io.check_rng_states(path, ck["rng"])
        st = ck["trainer"]
        ckpt_io.check_fields(path, "trainer", st, self.RESUMED)
        sums = self._own_sums(path, st["train_sums"])
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.epoch, self.step_in_epoch, self.global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        self.best_val, self.best_epoch, self.bad_epochs = st["best_val"], st["best_epoch"], st["bad_epochs"]
        self.stopped_early, self.history = st["stopped_early"], list(st["history"])
        self.train_time, self.train_samples = st["train_time"], st["train_samples"]
        self.sums = MetricSums(self.device, sums)
        if len(ck["rng"]) == self.dist.world_size:
            ckpt_io.set_rng_state(ck["rng"][self.dist.rank], self.device, self.model)
        else:  # different number of processes: the data order still matches, the random streams cannot
            seed_everything(self.cfg.seed + self.dist.rank + 1_000_003 * self.global_step)
            seed_layer_generators(self.model, 1 + self.global_step, self.dist.rank)

    def _own_sums(self, path, saved: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """This rank's partial metric sums of the checkpoint's epoch: its own when the checkpoint holds one per
        process, else (another number of processes) their total on rank 0 and zeros on the others, since the
        epoch's metrics are sums over ranks. (Format 3 and before saved one tensor, rank 0's.)"""
        saved = [saved] if torch.is_tensor(saved) else saved
        if not isinstance(saved, list) or not saved or any(not torch.is_tensor(t) or t.shape != (len(FIELDS),)
                                                           for t in saved):
            raise ckpt_io.CheckpointError(f"checkpoint {str(path)!r} has a malformed trainer.train_sums (expected "
                                          f"tensors of the {len(FIELDS)} metric sums, one per process)")
        if len(saved) == self.dist.world_size:
            return saved[self.dist.rank]
        return torch.stack(saved).sum(0) if self.dist.is_main else torch.zeros_like(saved[0])

    # ---- loops ------------------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                              enabled=self.cfg.precision == "bf16")

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = out.float()
        if self.task == "regression":
            out = out.reshape(y.shape) if out.numel() == y.numel() else out
            y = y.float()
        return self.loss_fn(out, y)

    def _batches(self):
        """This rank's remaining batches of the current epoch (skipping those done before a resume), each as
        ``((x, y), weight, size)``. Global batch i is the i-th slice of ``batch_size`` samples of the epoch's
        permutation (the last one smaller, no sample twice); rank r takes every world-th sample of it from the
        r-th on. ``size`` is the global batch's size, ``weight`` this rank's share of it times the number of ranks:
        weighting the ranks' mean losses by it makes DDP's average of their gradients the gradient of the global
        batch's mean loss, as one process computes it (weight 1 but for the last batch). A rank left without a
        sample (a last batch smaller than the number of ranks) steps on its first sample at weight 0 (DDP needs
        every rank's backward)."""
        world, rank, size = self.dist.world_size, self.dist.rank, self.cfg.batch_size
        order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(self.cfg.seed + self.epoch))
        chunks = [order[i:i + size].tolist() for i in range(self.step_in_epoch * size, len(order), size)]
        shares = [chunk[rank::world] for chunk in chunks]
        batches = [share or chunk[:1] for share, chunk in zip(shares, chunks)]
        loader = self._loader(self.train_set, batch_sampler=batches, pin_memory=self.device.type == "cuda")
        return zip(loader, [len(share) * world / len(chunk) for share, chunk in zip(shares, chunks)], map(len, chunks))

    @staticmethod
    def _loader(dataset, **kwargs) -> DataLoader:
        # A private generator: creating a DataLoader iterator otherwise draws a seed from the global RNG, so
        # an iterator made mid-epoch on resume would shift every later random number.
        return DataLoader(dataset, generator=torch.Generator(), **kwargs)

    def _train_epoch(self) -> dict:
        cfg = self.cfg
        self.ddp.train()
        bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and self.dist.is_main), leave=False, dynamic_ncols=True)
        refresh = max(1, self.steps_per_epoch // 10)
        t0 = time.perf_counter()
        bad = torch.full((), -1, dtype=torch.long, device=self.device)   # this epoch's first step with a NaN/inf loss
        for (x, y), weight, size in self._batches():
            try:
                loss, out, y = self._step(x, y, weight)
            except Exception as err:   # NaN weights after a NaN loss fail the next step, in some layer's own check
                if int(bad) >= 0:
                    raise NonFiniteLoss(self._nonfinite_message(bad)) from err
                raise
            bad = torch.where((bad < 0) & ~torch.isfinite(loss.detach()), self.step_in_epoch + 1, bad)  # (no sync)
            if weight:                         # (weight 0: a stand-in sample another rank counts)
                self.sums.update(self.task, loss, out, y)
            self.step_in_epoch += 1
            self.global_step += 1
            self.train_samples += size
            bar.update(1)
            if self.step_in_epoch % refresh == 0 and bar.disable is False:
                bar.set_postfix(loss=f"{self.sums.compute(self.task).get('loss', float('nan')):.4f}")
            self._emit("step_end")
            if cfg.save_every and self.step_in_epoch % cfg.save_every == 0 and self.step_in_epoch < self.steps_per_epoch:
                self.train_time += time.perf_counter() - t0
                self._finite_metrics(bad)      # (no checkpoint of diverged weights)
                self._save(["last"])
                t0 = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_time += time.perf_counter() - t0
        bar.close()
        return self._finite_metrics(bad)

    def _step(self, x: torch.Tensor, y: torch.Tensor, weight: float) -> tuple[torch.Tensor, ...]:
        """One optimizer step on the batch ``(x, y)``, its mean loss weighted by ``weight`` (see :meth:`_batches`);
        returns (the unweighted loss, output, y on the device)."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        with self._autocast():
            out = self.ddp(x)
        loss = self._loss(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if weight == 1 else loss * weight).backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return loss, out, y

    def _finite_metrics(self, bad: torch.Tensor) -> dict:
        """The epoch's training metrics so far, summed over ranks (at the points where they sync anyway: checkpoints
        and the epoch's end); :class:`NonFiniteLoss` if its loss is NaN or infinite (``bad``: the first such step)."""
        total = MetricSums(self.device, D.all_reduce_sum(self.sums.state, self.dist))
        metrics = total.compute(self.task, self.elements_per_sample)
        if not math.isfinite(metrics.get("loss", 0.0)):
            raise NonFiniteLoss(self._nonfinite_message(bad))
        return metrics

    def _nonfinite_message(self, bad: torch.Tensor) -> str:
        step = int(bad)
        where = f"step {step} of {self.steps_per_epoch}" if step >= 0 else "first on another process"
        return (f"the training loss became NaN or infinite in epoch {self.epoch + 1}, {where}: the run diverged "
                f"(a lower lr or a grad_clip may help) or the data hold NaN/inf values; no checkpoint holds that step")

    @torch.no_grad()
    def evaluate(self, indices: list[int] | None = None) -> dict:
        """Metrics of the current model on ``indices`` (default: the validation split), summed over ranks."""
        indices = self.val_idx if indices is None else indices
        shard = indices[self.dist.rank::self.dist.world_size]
        self.model.eval()
        sums = MetricSums(self.device)
        loader = self._loader(Subset(self.info.dataset, shard), batch_size=self.local_batch, shuffle=False)
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                out = self.model(x)      # the bare module: ranks may run different numbers of batches
            sums.update(self.task, self._loss(out, y), out, y)
        total = MetricSums(self.device, D.all_reduce_sum(sums.state, self.dist))
        return total.compute(self.task, self.elements_per_sample)

    @torch.no_grad()
    def predict(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, targets) of the current model on ``indices``, in order, on the CPU (this rank only)."""
        self.model.eval()
        preds, ys = [], []
        for x, y in self._loader(Subset(self.info.dataset, indices), batch_size=self.local_batch,
                                 shuffle=False):
            with self._autocast():
                out = self.model(x.to(self.device))
            preds.append(out.float().cpu())
            ys.append(y)
        return torch.cat(preds), torch.cat(ys)

    def _emit(self, event: str) -> None:
        for cb in self.callbacks:
            cb(event, self)

    # ---- the run ----------------------------------------------------------------------------------------------
    def fit(self, resume: str | Path | bool | None = None, overwrite: bool = False) -> dict:
        """Train, continuing from the checkpoint ``resume`` if given (``True``: this run's own last checkpoint,
        ``out_dir/checkpoints/last.pt``, as the command line's bare ``--resume``); return the summary dict.

        Without ``resume``, an earlier run's outputs in ``out_dir`` (:meth:`earlier_run`) are an error
        (:class:`RunExists`) unless ``overwrite=True``, which removes them (and nothing else there) first.
        A resumed run with no epoch left (already at ``epochs``, or stopped early) trains nothing and says why in
        the summary's ``"nothing_to_train"`` (else None); its config records ``epochs`` as the epochs it has run
        when fewer were asked for."""
        validate.boolean("overwrite", overwrite)
        resume = self._resume_path(resume)
        if overwrite and resume is not None:
            raise ValueError("resume and overwrite=True exclude each other: resuming continues the run in out_dir, "
                             "overwriting removes it")
        self._threads_before = None
        try:
            try:
                self._setup()   # (joins the process group: what fails from here on leaves it)
                summary = self._fit(resume, overwrite)
            except BaseException:
                self._release_ddp()
                D.teardown(self.dist, ok=False)
                raise
            self._release_ddp()
            D.teardown(self.dist)
            return summary
        finally:
            if self._threads_before is not None:
                torch.set_num_threads(self._threads_before)

    def _resume_path(self, resume) -> Path | None:
        """``fit``'s ``resume`` as a checkpoint path (None: a fresh run)."""
        if resume is None or resume is False:
            return None
        last = str(self.paths["last_checkpoint"])
        if resume is True:
            return Path(last)
        if not isinstance(resume, (str, os.PathLike)):
            raise ValueError(f"resume must be a checkpoint path, True (this run's own checkpoint {last!r}) or None; "
                             f"got {resume!r}")
        if not Path(resume).exists():
            raise ckpt_io.CheckpointError(f"checkpoint {str(resume)!r} does not exist (resume=True continues the run "
                                          f"in out_dir from {last!r})")
        return Path(resume)

    def _release_ddp(self) -> None:
        """Drop the DDP wrapper (its reducer holds the process group's gloo/NCCL work objects) before the group
        is destroyed, while the interpreter is fully alive: freed later, at interpreter exit, such objects can
        abort the process (SIGABRT, "terminate called without an active exception"; rank 1 of the gloo test did,
        now and then). ``self.model`` (the bare module) stays usable."""
        if self.ddp is not self.model:
            self.ddp = self.model
            gc.collect()

    def earlier_run(self) -> list[str]:
        """The outputs of an earlier run found in ``out_dir`` (the files this trainer writes, and TensorBoard event
        files), relative to it; empty for an empty or new folder."""
        found = []
        for key in ("last_checkpoint", "best_checkpoint", "summary", "config", "csv_log", "tensorboard", "loss_curve",
                    "prediction_plot"):
            path = self.paths[key]
            if path.is_file() or key == "tensorboard" and any(path.glob(logs.EVENT_FILES)):
                found.append(str(path.relative_to(self.out_dir)) if path.is_relative_to(self.out_dir) else str(path))
        return found

    def _remove_earlier_run(self) -> None:
        """Remove the outputs this trainer writes (and temporary files of an interrupted write of them) from
        ``out_dir``, nothing else: the TensorBoard folder loses its event files only."""
        for key, path in self.paths.items():
            if key == "tensorboard":
                doomed = list(path.glob(logs.EVENT_FILES))
            else:
                doomed = [path] if path.is_file() else []
                doomed += list(path.parent.glob(f".{path.name}.tmp-*"))
            for f in doomed:
                f.unlink()

    def _prepare_out_dir(self, resume, overwrite: bool) -> Exception | None:
        """On rank 0: refuse an earlier run in ``out_dir`` (a fresh run that may not overwrite it) or remove it,
        then check the run's files can be written; the error, or None."""
        try:
            earlier = self.earlier_run() if resume is None else []
            if earlier and not overwrite:
                raise RunExists(self.out_dir, earlier)
            if overwrite:
                try:
                    self._remove_earlier_run()
                except OSError as err:
                    raise ckpt_io.CheckpointError(f"cannot remove the earlier run in out_dir {str(self.cfg.out_dir)!r}"
                                                  f" ({type(err).__name__}: {err})") from None
            self._check_writable()
        except (RunExists, ckpt_io.CheckpointError) as err:
            return err
        return None

    def _check_writable(self):
        """The run's directory and its checkpoints can be written, before an epoch is spent (a checkpoint that cannot
        be saved would lose it)."""
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            ckpt_io.atomic_write_text(self.ckpt_dir / ".write-test", "")
            (self.ckpt_dir / ".write-test").unlink()
            for path in self.paths.values():
                if Path(path).is_dir() and Path(path).suffix:
                    raise IsADirectoryError(errno.EISDIR, "it is a directory", str(path))
        except OSError as err:
            raise ckpt_io.CheckpointError(f"out_dir {str(self.cfg.out_dir)!r} cannot hold this run's files "
                                          f"({type(err).__name__}: {err})") from None

    def _fit(self, resume, overwrite: bool) -> dict:
        self.nothing_to_train = None
        if resume is not None:
            self._resume(resume)
            if self.stopped_early or self.epoch >= self.cfg.epochs:
                self.nothing_to_train = (f"stopped early at epoch {self.epoch}" if self.stopped_early else
                                         f"already at epoch {self.epoch} >= epochs {self.cfg.epochs}")
                # the run's length, not a smaller number asked for (config.epochs >= epochs_run in summary.json)
                self.cfg = dataclasses.replace(self.cfg, epochs=max(self.cfg.epochs, self.epoch))
        cfg = self.cfg
        main = self.dist.is_main
        # rank 0 decides (and removes); every rank waits for its verdict, so none writes or trains on its own
        problem = D.gather_objects(self._prepare_out_dir(resume, overwrite) if main else None, self.dist)[0]
        if problem is not None:
            raise problem
        tb = None
        if main:
            logs.write_json(self.paths["config"], cfg.to_dict())
            if cfg.tensorboard:
                tb = logs.TensorBoardLog(self.paths["tensorboard"], self.history)
        try:
            while self.epoch < cfg.epochs and not self.stopped_early:
                train = self._train_epoch()
                val = self.evaluate()
                if not math.isfinite(val["loss"]):
                    raise NonFiniteLoss(f"the validation loss of epoch {self.epoch + 1} is {val['loss']} (the training "
                                        f"loss was finite): the validation data or the model's outputs hold NaN/inf")
                lr = self.optimizer.param_groups[0]["lr"]       # the rate this epoch trained with
                self.scheduler.step(val["loss"])
                improved = val["loss"] < self.best_val
                if improved:
                    self.best_val, self.best_epoch, self.bad_epochs = val["loss"], self.epoch, 0
                else:
                    self.bad_epochs += 1
                row = {"epoch": self.epoch + 1, "lr": lr}
                row.update({f"train_{k}": v for k, v in train.items()})
                row.update({f"val_{k}": v for k, v in val.items()})
                row["train_time_s"] = self.train_time
                self.history.append(row)
                self.epoch += 1
                self.step_in_epoch = 0
                self.sums = MetricSums(self.device)
                if cfg.patience and self.bad_epochs >= cfg.patience:
                    self.stopped_early = True
                # best.pt first: a crash before last.pt is written reruns the epoch, which writes best.pt again
                # (the other way round, last.pt would name this epoch best while best.pt held an older one)
                self._save(["best", "last"] if improved else ["last"])
                if main:
                    logs.write_csv(self.paths["csv_log"], self.history)
                    if tb is not None:
                        tb.log(row)
                self._emit("epoch_end")
        finally:
            if tb is not None:
                tb.close()
        return self._finish()

    def _finish(self) -> dict:
        cfg = self.cfg
        best = self.history[self.best_epoch] if self.best_epoch >= 0 else {}
        summary = {
            "task": self.task, "model": cfg.model, "dataset": cfg.dataset, "device": str(self.device),
            "world_size": self.dist.world_size, "epochs_run": len(self.history), "stopped_early": self.stopped_early,
            "nothing_to_train": self.nothing_to_train,
            "best_epoch": self.best_epoch + 1,
            "best": {k[4:]: v for k, v in best.items() if k.startswith("val_")},
            "final": {k: v for k, v in (self.history[-1] if self.history else {}).items()},
            "train_samples": self.train_samples, "train_time_s": self.train_time,
            "train_samples_per_s": self.train_samples / self.train_time if self.train_time > 0 else None,
            "num_train": len(self.train_idx), "num_val": len(self.val_idx),
            "metrics": list(metric_names(self.task)),
            "config": cfg.to_dict(),
        }
        if self.dist.is_main:
            from . import plots   # matplotlib only when plotting

            if self.history:      # (a crash after the final epoch's checkpoint left its row out; nothing reruns it)
                logs.write_csv(self.paths["csv_log"], self.history)

            self._plots = plots
            paths = {k: str(v) for k, v in self.paths.items() if (k != "tensorboard" or cfg.tensorboard)
                     and (k != "best_checkpoint" or self.best_epoch >= 0) and k != "prediction_plot"}
            if cfg.plots and self.history:
                plots.loss_curves(self.paths["loss_curve"], self.history,
                                  f"{cfg.model} on {cfg.dataset}: loss per epoch")
                if self.task == "regression":
                    paths["prediction_plot"] = str(self._forecast_plot())
            elif not cfg.plots:
                paths.pop("loss_curve")
            summary["paths"] = paths
            logs.write_json(self.paths["summary"], summary)
        return summary

    def _forecast_plot(self) -> Path:
        """Prediction vs target over the whole series with the best weights (then restores the last ones)."""
        last = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.best_epoch >= 0 and self.paths["best_checkpoint"].is_file():   # (else: an earlier run's file)
            self.model.load_state_dict(ckpt_io.load(self.paths["best_checkpoint"])["model"])
        order = list(range(len(self.info.dataset)))
        pred, y = self.predict(order)
        self.model.load_state_dict(last)
        val = set(self.val_idx)
        path = self.paths["prediction_plot"]
        return self._plots.prediction_vs_target(path, y.reshape(len(order), -1)[:, 0].tolist(),
                                          pred.reshape(len(order), -1)[:, 0].tolist(), [i in val for i in order],
                                          f"{self.cfg.model} on {self.cfg.dataset}: prediction vs target (best epoch)")
