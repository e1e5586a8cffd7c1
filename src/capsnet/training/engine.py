"""The training loop: the paper's recipe, progress bars, metrics, checkpoints and exact resume.

Run folders are :mod:`.runs`' business, the test pass :mod:`.evaluation`'s, the exceptions :mod:`.errors`'."""

from __future__ import annotations

import functools
import itertools
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..data import DATASETS, Split, TensorLoader, load_split, overlay_pairs, place_on_canvas, random_shift
from ..data.registry import registering_module as dataset_registering_module
from ..data.testsets import TestSet, base_dataset, check_canvas_holds, load_test_set
from ..losses import CapsuleLoss
from ..models import CapsNet, create_model, is_capsule_model
from ..models.registry import registering_module
from ..config import TrainConfig, flag_name, reaches_error
from ..functional import hits
from ..runtime import retain_freed_memory
from .checkpoint import (
    CheckpointError, checkpoint_file, load_checkpoint, load_model_weights, save_checkpoint, warn_if_built_differently,
)
from .devices import resolve_device
from .distributed import in_process_group, init_distributed, shutdown_distributed
from .errors import TrainingError, TrainingInterrupted
from .evaluation import class_tallies, error_report
from .objectives import CapsuleObjective, CrossEntropyObjective
from .precision import (
    CompiledOrEager, autocast, compile_mode, grad_scaler, resolve_channels_last, resolve_precision,
)
from .runs import append_metrics, check_run_dir, make_run_dir, truncate_metrics, write_run_config

__all__ = ["Trainer", "train"]

# Settings a resumed run must share with its checkpoint, or the continuation would not be the same run.
RUN_DEFINING_SETTINGS = (
    "dataset", "model", "batch_size", "lr", "lr_decay", "lr_decay_steps", "lr_warmup_steps", "routing_iterations",
    "reconstruction", "reconstruction_weight", "halve_margin", "detach_intermediate", "digit_bias",
    "max_shift", "seed", "limit_train", "limit_test", "canvas", "extra_test", "init_from",
)
_POSTFIX_EVERY = 20  # progress-bar updates read the device's running sums (a sync on GPU): not every step
# Ctrl-C; torchrun and cluster schedulers send SIGTERM; a closing terminal (a dropped ssh session) SIGHUP.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@dataclass
class _Progress:
    """Where the run stands: enough to continue it exactly after an interruption."""

    epoch: int = 0  # epochs fully done
    batch: int = 0  # batches done within the current epoch
    step: int = 0  # optimizer steps in total
    best_error: float = math.inf
    last_error: float = math.inf  # the last finished epoch's: what --stop-at-error reads
    sums: dict[str, float] = field(default_factory=dict)  # running sums of the current epoch
    seconds: float = 0.0  # training seconds spent in the current epoch


class Trainer:
    """Trains a model from the registry (a CapsNet or a baseline CNN) on MNIST, Fashion-MNIST, MultiMNIST or a
    dataset registered with :func:`~capsnet.register_dataset`, following a :class:`TrainConfig`.

    Example (a notebook needs no command line)::

        trainer = Trainer(TrainConfig(epochs=1, limit_train=1000, output_dir="/tmp/run"))
        history = trainer.fit()        # one dict of metrics per epoch
        trainer.model                  # the trained model
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        device = resolve_device(config.device)
        self.distributed = init_distributed(device)
        self.device = self.distributed.device(device)
        if config.batch_size < self.distributed.world_size:
            raise TrainingError(f"--batch-size {config.batch_size} is the global batch: it must be at least the "
                                f"{self.distributed.world_size} processes")
        self.precision = resolve_precision(config.precision)
        self.channels_last = resolve_channels_last(config.channels_last, self.device)
        if self.device.type == "cpu" and config.retain_memory:
            retain_freed_memory()
        initial = _read_initial_weights(config)  # first: a wrong path fails before the data loads
        named_by_time = "output_dir" in config.derived
        self.run_dir = Path(config.output_dir)
        if self.distributed.is_main:  # first: a wrong --resume or folder fails before the data loads
            check_run_dir(self.run_dir, resume=config.resume, named_by_time=named_by_time)
        self._load_data()
        self._build_model(initial)
        # Made only now, so that a run that cannot start (a wrong data folder, weights that do not fit) leaves none.
        if self.distributed.is_main:
            self.run_dir = make_run_dir(self.run_dir, named_by_time=named_by_time)
        self.run_dir = Path(self.distributed.gather(str(self.run_dir))[0])  # the folder rank 0 made, on every rank
        config.output_dir = str(self.run_dir)
        self.progress = _Progress()
        self._signalled = 0  # the number of the stop signal that reached this rank; 0: none
        self._stop_signal = 0  # the same, agreed by all ranks (the largest any of them got)
        self._augment_generator = torch.Generator(device=self.device)
        if config.resume:
            self._restore(load_checkpoint(self.run_dir / "last.pt", map_location=self.device))
        elif self.distributed.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", 0)  # lines left by a run killed before its first save
        self._write_config()

    def _write_config(self) -> None:
        """``config.json``: the settings, the model's arguments and size, and what ``auto`` options became."""
        if self.distributed.is_main:
            write_run_config(
                self.run_dir, self.config, model_kwargs=self.model_kwargs, parameters=self.parameter_count,
                resolved=self.settings(), **({"initial_weights": self.initial_weights} if self.initial_weights else {}),
            )

    def _build_model(self, initial: dict[str, Any] | None) -> None:
        """Model (same initial weights on every rank: from the seed, or the checkpoint ``initial``), its DDP/compile
        wrappers, objective and optimizer."""
        config = self.config
        torch.manual_seed(config.seed)
        self.model = create_model(config.model, **self.model_kwargs).to(self.device)
        if isinstance(self.model, CapsNet) and not is_capsule_model(config.model):  # before the run folder is made
            raise TrainingError(
                f"model {config.model!r} builds a CapsNet but is registered as a classifier that returns logits, to "
                f"be trained with cross-entropy; register it with register_model({config.model!r}, builder, "
                f"capsule_model=True) to train it with the capsule losses"
            )
        # Before DDP wraps the model: it then copies rank 0's weights to every rank.
        self.initial_weights = None if initial is None else self._load_initial_weights(initial)
        self.parameter_count = sum(p.numel() for p in self.model.parameters())
        torch.manual_seed(config.seed + self.distributed.rank)  # dropout: independent masks on every rank
        if self.channels_last:
            # The convolutions only: other 4-D parameters (a CapsNet's W[i, j]) are not images.
            for module in self.model.modules():
                if isinstance(module, nn.Conv2d):
                    module.to(memory_format=torch.channels_last)
        # DDP averages the gradients over the ranks during backward; one process trains the model itself.
        self._ddp_model = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.distributed.enabled else self.model
        )
        self.scaler = grad_scaler(self.precision, self.device)
        self.objective = (
            CapsuleObjective(CapsuleLoss(config.reconstruction_weight, halve_margin=config.halve_margin))
            if is_capsule_model(config.model) else CrossEntropyObjective()
        )
        # Compiled together, the model and its losses become one forward and one backward graph (replayed as CUDA
        # graphs on a single GPU; under DDP, Dynamo splits them at its communication hooks).
        losses = functools.partial(self.objective, self._ddp_model)
        self.compile_mode = compile_mode(config.compile, self.device, distributed=self.distributed.enabled)
        self._losses = losses if self.compile_mode is None else CompiledOrEager(losses, mode=self.compile_mode)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, **_fast_adam(self.device))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: _lr_factor(step, config))

    def _load_initial_weights(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """``--init-from``: load the weights of another run's checkpoint; optimizer, schedule and progress start
        afresh. Returns which model the weights come from and after how many epochs and steps they were saved."""
        try:
            load_model_weights(self.model, checkpoint, checkpoint_file(self.config.init_from),
                               model_name=self.config.model)
        except CheckpointError as exc:
            if checkpoint.get("model_name") != self.config.model:
                raise  # the message names both models
            differences = [text for _, text in _model_kwargs_differences(checkpoint.get("model_kwargs", {}),
                                                                         self.model_kwargs)]
            said = "; ".join(differences) or "none (was it written by another version of capsnet?)"
            raise CheckpointError(f"{exc}; model settings that differ (not all change the layers): {said}") from None
        progress = checkpoint.get("progress") or {}
        return {"model": checkpoint.get("model_name"), **{key: progress.get(key) for key in ("epoch", "batch", "step")}}

    def settings(self) -> dict[str, Any]:
        """What ``auto`` and ``None`` options became on this machine, and the number of processes."""
        return {
            "device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
            "compile": self.compile_mode if self._compiled() else "off", "world_size": self.distributed.world_size,
        }

    def _compiled(self) -> bool:
        """Whether the step runs compiled (not after falling back to eager)."""
        return isinstance(self._losses, CompiledOrEager) and self._losses.compiled is not None

    def _load_data(self) -> None:
        config = self.config
        show = config.progress and self.distributed.is_main
        if not self.distributed.is_main:
            self.distributed.barrier()  # rank 0 downloads, if it must, while the others wait
        train = load_split(base_dataset(config.dataset), config.data_dir, train=True, progress=show)
        test = load_test_set(config.dataset, config.data_dir, canvas=config.canvas, limit=config.limit_test,
                             extra_test=config.extra_test, progress=show)
        if self.distributed.is_main:
            self.distributed.barrier()
        _check_splits_agree(train, test, config)
        self.classes = list(train.classes)
        # The whole split lives on the training device: batches are index operations, no host copies. Every rank
        # holds it (47 MB for MNIST) and trains on its own part of each batch.
        train_labels = train.labels[: config.limit_train]
        if config.dataset == "multimnist":
            _check_every_class_present(train_labels, len(self.classes))
        self.train_images = train.images[: config.limit_train].to(self.device)
        self.train_labels = train_labels.to(self.device)
        self._train_index = torch.arange(len(self.train_labels), device=self.device)
        if config.canvas is not None:
            self.train_images = place_on_canvas(self.train_images, config.canvas, 0)
        self.test_images, self.test_labels = test.images.to(self.device), test.labels.to(self.device)
        self.extra_test_images = None if test.extra_images is None else test.extra_images.to(self.device)
        self.extra_test_labels = None if test.extra_labels is None else test.extra_labels.to(self.device)
        _, channels, height, width = self.test_images.shape
        self.model_kwargs = config.model_kwargs(len(self.classes), channels, (height, width))

    def fit(self) -> list[dict[str, Any]]:
        """Train until ``config.epochs``, the first epoch end past ``config.time_limit`` minutes, or the first
        whose test error is at most ``config.stop_at_error`` percent; returns the metrics of the epochs run by
        this call.

        Ctrl-C (SIGINT), SIGTERM or SIGHUP is honoured at the next batch boundary: ``last.pt`` is saved there, so
        a resumed run continues exactly, and :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is raised with
        the signal's number. ``config.save_every`` also saves it
        every so many minutes, at a batch boundary, for kills that give no warning. A second Ctrl-C stops at once.
        Under ``torchrun`` all ranks stop at the same batch when any of them got the signal. Exactly means the
        same batches, augmentation, dropout masks and weights, with as many processes as before.
        """
        history, self._signalled, self._stop_signal = [], 0, 0
        started = self._saved_at = time.monotonic()
        with self._deferred_interrupt():
            while self.progress.epoch < self.config.epochs and not self.reached_target:
                self._train_epoch()
                if self._stop_signal:  # agreed by all ranks in the epoch's last step
                    self._save_within_epoch()
                    break
                history.append(self._finish_epoch())  # saves last.pt
                if self._stop_requested() or self._out_of_time(started):
                    break
        if self._stop_signal:
            self.distributed.barrier()  # no rank exits (which makes torchrun stop the others) before the save
            raise TrainingInterrupted(self.run_dir / "last.pt", self._stop_signal)
        return history

    @property
    def reached_target(self) -> bool:
        """Whether the last finished epoch ended at or below ``config.stop_at_error`` (the same answer on every
        rank). The last, not the best: a run resumed with a target that an earlier epoch met but the last one does
        not trains on, as the results table (which reads the last epoch) would expect."""
        return reaches_error(self.progress.last_error, self.config.stop_at_error)

    def _out_of_time(self, started: float) -> bool:
        """Whether ``--time-limit`` has passed (agreed by all ranks: their clocks differ slightly)."""
        limit = self.config.time_limit
        return limit is not None and self.distributed.any(time.monotonic() - started > 60 * limit)

    @contextmanager
    def _deferred_interrupt(self) -> Iterator[None]:
        """Turn SIGINT, SIGTERM and SIGHUP into a flag read between batches (signal handlers live in the main thread
        only)."""
        if threading.current_thread() is not threading.main_thread():
            yield  # no handler possible
            return
        # An ignored signal stays ignored: a job started with `&` from a script ignores SIGINT, one under nohup SIGHUP.
        handled = [signum for signum in _STOP_SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN]
        # None: a handler set outside Python, which cannot be put back; Python's own default stands in for it.
        previous = {
            signum: signal.getsignal(signum) or (signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            for signum in handled
        }

        def request_stop(signum, frame):
            self._signalled = self._signalled or signum  # the first one: the reason the run stops
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, previous[signal.SIGINT])  # a second Ctrl-C interrupts at once

        for signum in handled:
            signal.signal(signum, request_stop)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop_requested(self) -> bool:
        """Whether any rank got a stop signal; every rank gets the same answer at the same batch."""
        self._stop_signal = self.distributed.max_each(self._signalled)[0]
        return bool(self._stop_signal)

    def _epoch_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """This epoch's batches in an order drawn from (seed, epoch) alone, so a resumed run sees the same ones."""
        order = torch.Generator().manual_seed(_epoch_seed(self.config.seed, self.progress.epoch, stream=0))
        loader = TensorLoader(
            self._train_index, self.train_labels, batch_size=self.config.batch_size, shuffle=True, generator=order
        )
        if self.progress.batch == 0:
            self._augment_generator.manual_seed(_epoch_seed(self.config.seed, self.progress.epoch, stream=1))
        batches = itertools.islice(loader, self.progress.batch, None)
        # A final batch smaller than the number of ranks would leave some rank nothing to train on.
        return (batch for batch in batches if len(batch[1]) >= self.distributed.world_size)

    def _train_epoch(self) -> None:
        config, progress = self.config, self.progress
        self.model.train()
        # Saved sums are totals over all ranks: one rank carries them on, the others start from zero.
        sums = _device_sums(self.objective.terms, progress.sums if self.distributed.is_main else {}, self.device)
        total = -(-len(self.train_labels) // config.batch_size)
        bar = tqdm(
            self._epoch_batches(), total=total, initial=progress.batch, desc=f"epoch {progress.epoch + 1}/{config.epochs}",
            unit="batch", disable=not (config.progress and self.distributed.is_main), leave=False, dynamic_ncols=True,
        )
        seconds_before, start = progress.seconds, time.perf_counter()
        try:
            for indices, labels in bar:
                self._train_step(indices, labels, sums)
                progress.batch += 1
                progress.step += 1
                self._stop_signal, save_due = self.distributed.max_each(self._signalled, int(self._save_due()))
                if self._stop_signal:
                    break
                if save_due and progress.batch < total:  # at the epoch's end it saves anyway
                    saving = time.perf_counter()
                    progress.sums, progress.seconds = self._total_sums(sums), seconds_before + saving - start
                    self._save_within_epoch()
                    start += time.perf_counter() - saving  # the epoch's seconds are training time
                if progress.batch % _POSTFIX_EVERY == 0:
                    totals = self._total_sums(sums)
                    self._check_finite(totals["loss"])
                    bar.set_postfix(loss=f"{totals['loss'] / totals['seen']:.4f}",
                                    acc=f"{totals['correct'] / totals['seen']:.2%}")
        finally:
            bar.close()
        progress.sums = self._total_sums(sums)  # waits for the device: the time includes the work still queued
        progress.seconds = seconds_before + time.perf_counter() - start
        self._check_finite(progress.sums["loss"])

    def _save_due(self) -> bool:
        """Whether ``--save-every`` minutes have passed since the last save."""
        every = self.config.save_every
        return every is not None and time.monotonic() - self._saved_at > 60 * every

    def _save_within_epoch(self) -> None:
        """Save ``last.pt`` where the epoch stands (Ctrl-C, ``--save-every``), but never a non-finite state."""
        self._check_finite(self.progress.sums.get("loss", 0.0))  # empty right after an epoch's end
        self._check_weights_finite()  # the last update may be the bad one
        self._save("last.pt")

    def _total_sums(self, sums: dict[str, Tensor]) -> dict[str, float]:
        """The running sums added over all ranks, read to the host (one sync)."""
        stacked = self.distributed.sum_(torch.stack(list(sums.values())))
        return dict(zip(sums, stacked.tolist()))

    def _make_batch(self, indices: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(inputs, targets, originals)`` of the global batch of training examples ``indices``, augmented.

        MultiMNIST pairs each digit with a random partner (targets ``(b, 2)``, originals each digit alone);
        otherwise the images are shifted (targets ``(b,)``, originals the inputs themselves).
        """
        if self.config.dataset == "multimnist":
            batch = overlay_pairs(self.train_images, self.train_labels, indices, generator=self._augment_generator,
                                  num_classes=len(self.classes), max_shift=self.config.max_shift)
            return batch.images, batch.labels, batch.digits
        shifted = random_shift(self.train_images[indices], self.config.max_shift, generator=self._augment_generator)
        inputs = shifted.float().div_(255)
        return inputs, labels, inputs

    def _train_step(self, indices: Tensor, labels: Tensor, sums: dict[str, Tensor]) -> None:
        """One optimizer step on a global batch; each rank computes its shard.

        The whole batch is augmented on every rank (cheap gathers), so the augmentation does not depend on
        the number of processes: N ranks take the same steps as one process with the same ``batch_size``.
        """
        inputs, labels, originals = map(self.distributed.shard, self._make_batch(indices, labels))
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs may reuse the last step's output memory now
        with autocast(self.precision, self.device):
            terms, scores = self._losses(inputs, labels, originals)
        loss = terms["loss"]
        # DDP averages gradients over ranks with equal weights; shards may differ in size by one example.
        share = labels.shape[0] * self.distributed.world_size / indices.shape[0]
        self.scaler.scale(loss * share if share != 1 else loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        # Gradients live in CUDA-graph memory when compiled, which the next step's replay overwrites.
        self.optimizer.zero_grad(set_to_none=True)
        batch = labels.shape[0]
        with torch.no_grad():
            for name, value in terms.items():
                sums[name] += value.detach() * batch
            sums["correct"] += hits(scores, labels).sum()
            sums["seen"] += batch

    def _check_finite(self, loss_sum: Tensor | float) -> None:
        value = float(loss_sum)
        if not math.isfinite(value):
            self._stop_diverged(f"the loss became {value}")

    def _check_weights_finite(self) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self._stop_diverged("the weights became non-finite")

    def _stop_diverged(self, what: str) -> NoReturn:
        last = self.run_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise TrainingError(f"{what} in epoch {self.progress.epoch + 1} (step {self.progress.step}); stopped without "
                            f"saving, {kept}; try a lower --lr")

    def _finish_epoch(self) -> dict[str, Any]:
        progress, sums = self.progress, self.progress.sums
        self._check_weights_finite()  # the epoch's last update may be the bad one
        start = time.perf_counter()
        result = self._evaluate_on(self.test_images, self.test_labels, progress=self.config.progress)
        extra = {} if self.extra_test_images is None else {
            f"{self.config.extra_test}_error": self._evaluate_on(self.extra_test_images, self.extra_test_labels)["error"]
        }
        test_seconds = time.perf_counter() - start
        progress.epoch += 1
        metrics = {
            "epoch": progress.epoch,
            "step": progress.step,
            "lr": self.scheduler.get_last_lr()[0],
            "train_loss": sums["loss"] / sums["seen"],
            **{f"train_{name}_loss": sums[name] / sums["seen"] for name in self.objective.terms if name != "loss"},
            "train_accuracy": sums["correct"] / sums["seen"],
            "test_error": result["error"],
            "test_examples": result["examples"],
            **extra,
            "epoch_seconds": round(progress.seconds, 2),
            "test_seconds": round(test_seconds, 2),
            "train_images_per_second": round(sums["seen"] / progress.seconds, 1),
        }
        improved = metrics["test_error"] < progress.best_error
        progress.best_error = min(progress.best_error, metrics["test_error"])
        progress.last_error = metrics["test_error"]
        progress.batch, progress.sums, progress.seconds = 0, {}, 0.0
        if self.distributed.is_main:
            self._record(metrics)
        # best.pt first: killed between the two, the run repeats this epoch from the previous last.pt, while the
        # other order would leave a last.pt that believes best.pt holds this epoch.
        self._save(*(["best.pt"] if improved else []), "last.pt")
        return metrics

    def _record(self, metrics: dict[str, Any]) -> None:
        """Append the epoch to ``metrics.jsonl``, refresh ``config.json`` and report the epoch (rank 0)."""
        extra_key = f"{self.config.extra_test}_error"
        append_metrics(self.run_dir, metrics)
        self._write_config()  # a compile that failed at its first call has fallen back to eager by now
        tqdm.write(
            f"epoch {metrics['epoch']}/{self.config.epochs}: train loss {metrics['train_loss']:.4f}, "
            f"train acc {metrics['train_accuracy']:.2%}, test error {metrics['test_error']:.2%} "
            f"({metrics['test_examples']} images), "
            + (f"{self.config.extra_test} error {metrics[extra_key]:.2%}, " if self.config.extra_test else "")
            + f"{metrics['epoch_seconds']:.1f} s (+{metrics['test_seconds']:.1f} s testing), "
            f"{metrics['train_images_per_second']:.0f} img/s"
        )

    def _evaluate_on(self, images: Tensor, labels: Tensor, progress: bool = False) -> dict[str, Any]:
        """Error and per-class accuracy on a test set, each rank predicting its own part of it."""
        shard = self.distributed.shard
        tallies = class_tallies(
            self.model, shard(images), shard(labels), batch_size=self.config.eval_batch_size,
            num_classes=len(self.classes), precision=self.precision, progress=progress and self.distributed.is_main,
        )
        return error_report(self.distributed.sum_(tallies))

    def _save(self, *names: str) -> None:
        """Write the checkpoint under each of ``names`` (rank 0). Every rank calls it: it gathers their random
        states, so that each rank's dropout masks continue after a resume where they were."""
        rng = self.distributed.gather(_global_rng_state(self.device))
        self._saved_at = time.monotonic()
        if not self.distributed.is_main:
            return
        progress = self.progress
        checkpoint = {
            "config": self.config.to_dict(),
            "model_name": self.config.model,
            "model_kwargs": self.model_kwargs,
            "model_repr": repr(self.model),  # what the name built: warn_if_built_differently compares on loading
            "model_module": registering_module(self.config.model),  # named by build_model when it is not registered
            "dataset_module": dataset_registering_module(self.config.dataset),  # and by evaluate and figures
            "device_type": self.device.type,
            "classes": self.classes,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "rng": rng,  # one state per rank
            "progress": {**progress.__dict__, "augment_rng": self._augment_generator.get_state()},
            "initial_weights": self.initial_weights,  # so that a resumed run's config.json still says it
        }
        for name in names:
            save_checkpoint(self.run_dir / name, checkpoint)

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        mismatched = setting_differences(checkpoint["config"], self.config, "the checkpoint", checkpoint["model_kwargs"])
        saved_device = checkpoint.get("device_type", self.device.type)
        if saved_device != self.device.type:
            mismatched.append(f"the run is on {self.device.type} but the checkpoint was trained on {saved_device}")
        mismatched += [  # without the settings said above
            difference for key, difference in _model_kwargs_differences(checkpoint["model_kwargs"], self.model_kwargs)
            if key not in RUN_DEFINING_SETTINGS
        ]
        if mismatched:
            raise CheckpointError(f"{self.run_dir / 'last.pt'} does not match this run: " + "; ".join(mismatched))
        load_model_weights(self.model, checkpoint, self.run_dir / "last.pt")
        if self.distributed.is_main:  # once, not once per process
            warn_if_built_differently(self.model, checkpoint, self.run_dir / "last.pt", stacklevel=3)  # Trainer(...)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        rng_states = checkpoint.get("rng", [])
        if self.distributed.rank < len(rng_states):  # ranks new to the run keep their own seeds' streams
            _set_global_rng_state(rng_states[self.distributed.rank], self.device)
        if checkpoint.get("grad_scaler") and self.scaler.is_enabled():  # empty when saved without loss scaling
            self.scaler.load_state_dict(checkpoint["grad_scaler"])
        saved_progress = dict(checkpoint["progress"])
        self._augment_generator.set_state(saved_progress.pop("augment_rng").cpu())
        saved_progress.setdefault("last_error", saved_progress["best_error"])  # saved before 2026-11-29: the nearest
        self.progress = _Progress(**saved_progress)
        self.initial_weights = checkpoint.get("initial_weights")
        if self.distributed.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", self.progress.epoch)


def train(config: TrainConfig | None = None, **overrides: Any) -> list[dict[str, Any]]:
    """Train with ``config`` (default: the paper's recipe) updated by keyword ``overrides``.

    Returns one dict of metrics per epoch. Example: ``capsnet.train(epochs=1, output_dir="/tmp/run")``.
    """
    caller_made_the_group = in_process_group()  # then it is the caller's to end
    try:
        # A misspelt setting is a TypeError, not ignored.
        return Trainer(config.replace(**overrides) if config else TrainConfig(**overrides)).fit()
    finally:
        if not caller_made_the_group:
            shutdown_distributed()


def setting_differences(saved: dict[str, Any], asked: TrainConfig, source: str,
                        built: dict[str, Any] | None = None) -> list[str]:
    """``"--flag is X but SOURCE has Y"`` for every setting in :data:`RUN_DEFINING_SETTINGS` in which the run saved
    as ``saved`` (a checkpoint's or ``config.json``'s settings) differs from ``asked``. Settings newer than the
    saved run take their defaults; its plugins are not imported again (a module that has moved since would
    fail the import; the asking run's own have registered the model). Routing iterations and decoder compare as
    built: from the saved run's ``built`` model arguments where it has them (a model registered anew since then
    would resolve unset ones otherwise), and runs saved before 2026-11-29 recorded the defaults 3 and ``True``."""
    recorded = TrainConfig.from_dict({**saved, "plugins": None})

    def as_built(key: str) -> Any:
        return built[key] if built and key in built else recorded.model_setting(key)

    return [f"{flag_name(key)} is {asked.model_setting(key)!r} but {source} has {as_built(key)!r}"
            for key in RUN_DEFINING_SETTINGS if as_built(key) != asked.model_setting(key)]


def _model_kwargs_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, str]]:
    """``(argument, "--flag is X but the checkpoint has Y")`` for every model argument that differs."""
    return [
        (key, f"{_setting_name(key)} is {_shown(current.get(key))} but the checkpoint has {_shown(saved.get(key))}")
        for key in {**saved, **current} if saved.get(key) != current.get(key)
    ]


def _setting_name(model_kwarg: str) -> str:
    """The flag that sets a model argument (``--weight-std``), or the argument itself (``the model's image_size``)."""
    is_flag = model_kwarg in TrainConfig.setting_names()
    return flag_name(model_kwarg) if is_flag else f"the model's {model_kwarg}"


def _shown(value: Any) -> str:
    return "unset (the model's default)" if value is None else repr(value)


def _check_splits_agree(train: Split, test: TestSet, config: TrainConfig) -> None:
    """A registered dataset's two splits must have the same classes and image shape, and fit the ``--canvas``;
    capsnet's own agree by construction (MultiMNIST's 36x36 test pairs are made of its 28x28 training digits)."""
    if base_dataset(config.dataset) in DATASETS:
        return
    if train.classes != test.classes:
        raise TrainingError(f"dataset {config.dataset!r}: its training and test splits name different classes "
                            f"({train.classes} and {test.classes})")
    shape = tuple(train.images.shape[1:])  # the test images are on the canvas already
    if config.canvas is None and shape != tuple(test.images.shape[1:]):
        raise TrainingError(f"dataset {config.dataset!r}: its training images are {shape} (C, H, W), its test "
                            f"images {tuple(test.images.shape[1:])}")
    if config.canvas is not None:
        check_canvas_holds(config.canvas, train.images, config.dataset)


def _check_every_class_present(labels: Tensor, num_classes: int) -> None:
    """MultiMNIST draws each digit's partner from another class: every class must have digits to draw from."""
    missing = sorted(set(range(num_classes)) - set(labels.unique().tolist()))
    if missing:
        raise TrainingError(f"MultiMNIST pairs each digit with one of another class, but classes {missing} are missing "
                            f"from the {len(labels)} training images; raise --limit-train")


def _epoch_seed(seed: int, epoch: int, *, stream: int) -> int:
    """The seed of one random stream of one epoch (0: the batch order, 1: the augmentation), from the run's seed
    and the epoch alone, so that a resumed run draws what the uninterrupted one would have. The primes keep the
    seeds of different (seed, epoch, stream) apart in runs of fewer than 7919 epochs."""
    return seed * 1_000_003 + epoch + 7919 * stream


def _lr_factor(step: int, config: TrainConfig) -> float:
    """The learning rate of ``step`` over ``config.lr``: the official code's ``0.96 ** (step / 2000)``, applied
    after every step, times ``(step + 1) / N`` during a warm-up of N steps."""
    warmup = max(config.lr_warmup_steps, 1)
    return config.lr_decay ** (step / config.lr_decay_steps) * min(1.0, (step + 1) / warmup)


def _fast_adam(device: torch.device) -> dict[str, bool]:
    # The fused kernel updates all parameters in one pass (several times faster than per-parameter Adam).
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def _device_sums(terms: tuple[str, ...], start: dict[str, float], device: torch.device) -> dict[str, Tensor]:
    keys = (*terms, "correct", "seen")
    return {key: torch.tensor(start.get(key, 0.0), dtype=torch.float64, device=device) for key in keys}


def _global_rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_global_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _read_initial_weights(config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint ``--init-from`` names, for a new run (a resumed one has its own weights in last.pt)."""
    if config.init_from is None or config.resume:
        return None
    try:
        return load_checkpoint(config.init_from)
    except CheckpointError as exc:
        raise CheckpointError(f"--init-from: {exc} (--init-from \"\" starts from the seed instead)") from None
