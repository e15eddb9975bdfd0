"""``medseg train``: dataset -> model folder. Plan, preprocess (cached), train, validate, checkpoint.

The model folder (what ``medseg infer`` loads) holds: ``config.yaml`` (resolved), ``plan.json``,
``fingerprint.json``, ``labels.json``, ``splits.json``, ``weights.pt`` (best validated epoch; the last
epoch's when it was not validated), ``checkpoint_last.pt`` (everything needed to resume), ``log.jsonl``,
``validation.json``, ``versions.json`` and ``SHA256SUMS`` (see :mod:`medseg.model.folder`; ``medseg export`` copies what
inference needs). Every file is written atomically, so SIGKILL at any moment leaves it consistent.

Under ``torchrun`` every rank trains on its own patches (DistributedDataParallel averages gradients);
rank 0 alone plans, preprocesses, writes and logs; validation cases are shared out between ranks.
Validation runs the inference path on original grids (:mod:`medseg.train.validation`). When to stop, the
learning rate and when to validate are :mod:`medseg.train.schedule`'s; the final validation, post-processing
choice and sealing are :mod:`medseg.train.finish`'s (``tune_postprocess`` is re-exported here).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from medseg.config import RunConfig, config_from_dict, parse_duration, save_config
from medseg.data import load_dataset
from medseg.data.source import materialise
from medseg.errors import MedsegError
from medseg.io.atomic import make_output_dir, remove_stale_temporaries, write_text_atomic
from medseg.model.batching import windows_per_call
from medseg.model.device import autocast_dtype, precision_for
from medseg.model.distributed import Context, setup, shutdown
from medseg.model.networks import build_network, network_entry
from medseg.preprocess.plan import Plan
from medseg.train.augment import source_size
from medseg.train.averaging import WeightAverage
from medseg.train.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from medseg.train.compiled import training_network
from medseg.train.data import load_or_plan, prepare_cases, refuse_bad_dataset
from medseg.train.finish import clock, final_validation, seal_and_summarise, tune_postprocess
from medseg.train.loop import BatchStream, train_steps
from medseg.train.losses import training_loss
from medseg.train.progress_plot import update_progress_png
from medseg.train.sampling import PatchSampler
from medseg.train.schedule import RunState, Schedule
from medseg.train.snapshots import save_snapshot, snapshot_due
from medseg.train.splits import split_cases
from medseg.train.validation import ValidationSet, inference_settings, load_validation, summarise, validate

log = logging.getLogger(__name__)

__all__ = ["train", "tune_postprocess"]
DICOM_IMPORT = "dicom_import"  # the run's copy of a DICOM export as an nnU-Net raw folder


def train(dataset_path, out_dir, config: RunConfig, fold: int = 0, resume: bool = False, device: str = "auto",
          labels: str | Path | None = None) -> dict:
    """Train one fold and write the model folder ``out_dir``. Returns the final summary.

    ``dataset_path`` is any dataset :func:`medseg.data.source.open_dataset` reads: a DICOM export (or a
    manifest with RTSTRUCT/SEG labels) is imported once into ``out_dir/dicom_import``, its ROI names mapped by
    ``labels`` (a mapping file; default: the built-in table). When launched by ``torchrun`` (``WORLD_SIZE`` > 1)
    the run is distributed; see :mod:`medseg.model.distributed`.
    """
    ctx, dev = setup(device)
    try:
        if not ctx.main:  # rank 0 reports for every rank; the others only their warnings and errors
            logging.getLogger("medseg").setLevel(logging.WARNING)
        return _train(dataset_path, Path(out_dir), config, fold, resume, dev, ctx, labels)
    finally:
        shutdown(ctx)


def _train(dataset_path, out: Path, config: RunConfig, fold: int, resume: bool, dev, ctx: Context, labels) -> dict:
    start = time.perf_counter()
    if (out / "checkpoint_last.pt").exists() and not resume:
        raise MedsegError("run folder already has a checkpoint; add --resume to continue it or pick a new folder", out)
    if resume and (out / "config.yaml").exists():
        config = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()), str(out / "config.yaml"))
    network_entry(config.model.name)  # an unknown network is refused before any work
    _seed(config)
    failure = None
    if ctx.main:  # rank 0 imports, checks, plans, splits and fills the cache; the others then read what it wrote
        try:
            make_output_dir(out)
            remove_stale_temporaries(out)  # left by a run that was killed mid-write
            dataset_path = _imported(dataset_path, out, labels)
            dataset = load_dataset(dataset_path)
            refuse_bad_dataset(dataset)
            budget = parse_duration(config.train.time_budget)
            _prepare(dataset, config, out, fold, dev, None if budget is None else budget - (
                time.perf_counter() - start))
        except MedsegError as exc:
            failure = exc
    if ctx.broadcast(str(failure) if failure else None):  # every rank stops together on a refused dataset
        raise failure if failure else MedsegError("rank 0 refused the dataset (see its message)")
    dataset = load_dataset(ctx.broadcast(str(dataset_path)))
    plan, _ = load_or_plan(dataset, config, out)
    tc = config.train
    split = split_cases(dataset, tc.folds, tc.seed, out / "splits.json", tc.split_group)[fold]
    train_data = prepare_cases(dataset, split["train"], plan, out / "cache")
    val_set = load_validation(dataset, split["val"])
    log.info(f"preprocessed {len(split['train'])} training cases, loaded {len(split['val'])} validation cases in "
             f"{time.perf_counter() - start:.0f} s" + (f"; {ctx.world} ranks" if ctx.world > 1 else ""))
    dtype = _precision(config, plan, dev, ctx)
    net, state, kept = _fit(config, plan, train_data, val_set, out, dev, dtype, start, resume, ctx)
    final = final_validation(net, config, val_set, plan, out, dev, dtype) if ctx.main else None
    ctx.barrier()
    if not ctx.main:
        return {"rank": ctx.rank, **state.to_dict()}
    return seal_and_summarise(out, plan, state, kept, time.perf_counter() - start, final)


def _seed(config: RunConfig) -> None:
    """Threads, seed and determinism as ``train`` asks."""
    tc = config.train
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    torch.manual_seed(tc.seed)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _imported(dataset_path, out: Path, labels) -> Path:
    """The dataset to train on: a DICOM export (or DICOM cases of a manifest) imported once per run into
    ``out/dicom_import``, so epochs never re-read DICOM; any other dataset as it is."""
    path, dataset = materialise(dataset_path, out / DICOM_IMPORT, labels)
    for line in dataset.notes if dataset else []:
        log.info(line)
    return path


def _prepare(dataset, config, out: Path, fold: int, dev, seconds_left: float | None) -> None:
    plan, _ = load_or_plan(dataset, config, out, dev, seconds_left)
    save_config(config, out / "config.yaml")
    splits = split_cases(dataset, config.train.folds, config.train.seed, out / "splits.json",
                         config.train.split_group)
    if not 0 <= fold < len(splits):
        raise MedsegError(f"--fold {fold} out of range (0..{len(splits) - 1})")
    prepare_cases(dataset, splits[fold]["train"], plan, out / "cache")


def _precision(config, plan, dev, ctx: Context) -> torch.dtype | None:
    """The autocast dtype: ``train.precision``, where ``auto`` is measured on this machine by rank 0."""
    chosen = None
    if ctx.main:
        choice = precision_for(plan, config, dev)
        chosen = choice.precision
        log.info(f"precision {chosen} ({choice.reason})")
    return autocast_dtype(ctx.broadcast(chosen))


@dataclass
class _Trainer:
    """What the epochs share: the network (``model`` is what the steps call: it wrapped in DistributedDataParallel
    under torchrun, or compiled, :func:`~medseg.train.compiled.training_network`),
    optimiser, loss, patch sampler and batch stream, device and autocast dtype, and the weight average
    (``train.ema``), when there is one."""

    net: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    loss_fn: Callable
    sampler: PatchSampler
    device: torch.device
    dtype: torch.dtype | None
    batches: Iterator | None = None  # (images, labels, contoured) batches, started once the epoch is known
    average: WeightAverage | None = None

    @property
    def scored(self) -> torch.nn.Module:
        """The network validation scores and ``weights.pt`` keeps: the weight average when there is one."""
        return self.average.net if self.average is not None else self.net


def _fit(config, plan: Plan, train_data, val_set: ValidationSet, out: Path, dev, dtype, start: float, resume: bool,
         ctx: Context) -> tuple[torch.nn.Module, RunState, int]:
    """Train until the schedule says stop. Returns the network (last epoch's weights), the final state and the
    epoch whose weights ``weights.pt`` holds."""
    trainer = _trainer(config, plan, train_data, dev, dtype, ctx)
    state = _resume(trainer, out, ctx) if resume and (out / "checkpoint_last.pt").exists() else RunState()
    # a time budget counts an interrupted run's time too
    schedule = Schedule.for_run(config.train, plan, start - state.elapsed, ctx.world)
    trainer.batches = _batches(config, plan, trainer.sampler, ctx, state.epoch)
    if schedule.budget is not None:
        _time_validation(trainer, config, plan, val_set, schedule, ctx)
    # rank 0 decides for every rank; a run trains at least one epoch (of at least one step) whatever the budget
    while (progress := ctx.broadcast(schedule.progress(state))) < 1.0 or state.epoch == 0:
        t0 = time.perf_counter()
        stats = _train_epoch(trainer, config, schedule, state, progress)
        scores = _validate_epoch(trainer, config, plan, val_set, schedule, state, stats, t0, ctx)
        schedule.epoch_seconds = time.perf_counter() - t0
        state = _end_epoch(trainer, out, schedule, state, stats, scores, t0, ctx)
    return trainer.scored, state, _kept_epoch(trainer.scored, out, state, ctx)


def _time_validation(trainer: _Trainer, config, plan: Plan, val_set: ValidationSet, schedule: Schedule,
                     ctx: Context) -> None:
    """Before the first step of a budgeted run (or a resumed one), time the validation pass on the first
    :data:`~medseg.train.schedule.TIMING_CASES` cases (the network as it is: untrained, its focused pass runs
    every window), so the deadline keeps a measured reserve for the final validation from the start. Without it
    the reserve was 15 % of the budget until epoch 1 ended: a 15-minute OpenKBP run (3.91 mm, 40x40x64 x2)
    whose first epoch reached the deadline then spent 437 s on the final validation against 135 s kept, and ran
    18.5 minutes (AMD EPYC Zen 3, 2 cores, 2026-12-07). The windows-per-call measurement (once per machine) is
    taken first, outside the timing."""
    windows_per_call(trainer.scored, trainer.device, trainer.dtype, (plan.in_channels, *plan.patch_size),
                     config.infer.sw_batch_size)
    subset, _ = _validate_timed(trainer, config, plan, val_set, schedule, ctx)
    log.info(f"validation timed before training: {schedule.val_seconds:.0f} s per pass (estimated from "
             f"{len(subset.ids)} case{'s' if len(subset.ids) > 1 else ''})")
    deadline = schedule.deadline()
    if ctx.main and deadline is not None and deadline <= time.perf_counter():
        log.warning(f"the time budget leaves no time to train: the final validation ({schedule.passes} pass"
                    f"{'es' if schedule.passes > 1 else ''} of ~{schedule.val_seconds:.0f} s) fills it; one epoch "
                    f"of one step runs")


def _trainer(config, plan: Plan, train_data, dev, dtype, ctx: Context) -> _Trainer:
    tc = config.train
    net = build_network(plan, config.model).to(dev)
    optimizer = _optimizer(net, tc)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and dev.type == "cuda" else None
    # DiceCE, marginal over each case's uncontoured classes (plain DiceCE when every class is contoured)
    steps = _expected_steps(tc)
    loss_fn = training_loss(tc.dice_weight, tc.ce_weight, tc.batch_dice, steps)
    classes = list(range(1, len(plan.labels)))  # cached labels are class indices 0..K-1
    images, labels, contoured = train_data
    sampler = PatchSampler(images, labels, plan.patch_size, classes, tc.foreground_fraction, _rank_seed(tc, ctx),
                           contoured, source_size(plan.patch_size, config.augment))
    model = torch.nn.parallel.DistributedDataParallel(net) if ctx.active else training_network(net, dev, steps)
    average = WeightAverage(net, tc.ema) if tc.ema > 0 else None
    return _Trainer(net, model, optimizer, scaler, loss_fn, sampler, dev, dtype, average=average)


def _expected_steps(tc) -> int:
    """Steps the run is planned for: epochs x iterations per epoch; with a time budget ``train.min_steps`` (what
    planning fits into it), none under 10 minutes (compiling the loss would take a share of those)."""
    if tc.time_budget:
        return tc.min_steps if parse_duration(tc.time_budget) >= 600 else 0
    return tc.epochs * tc.iterations_per_epoch


def _rank_seed(tc, ctx: Context) -> int:
    return tc.seed + 1000 * ctx.rank  # each rank draws its own patches


def _resume(trainer: _Trainer, out: Path, ctx: Context) -> RunState:
    """Network, optimiser and (rank 0's) sampler RNG from ``checkpoint_last.pt``; the log cut to its epoch."""
    ckpt = load_checkpoint(out / "checkpoint_last.pt")
    trainer.net.load_state_dict(ckpt["model"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    if trainer.average is not None and "average" in ckpt:
        trainer.average.load_state_dict(ckpt["average"])
    state = RunState.from_dict(ckpt["state"])
    if ctx.main:
        restore_rng(ckpt["rng"], trainer.sampler.rng)
        _truncate_log(out / "log.jsonl", state.epoch)
    log.info(f"resumed at epoch {state.epoch} (best mean Dice {state.best:.4f})")
    return state


def _batches(config, plan: Plan, sampler: PatchSampler, ctx: Context, epoch: int):
    """Augmented batches from DataLoader workers, seeded by rank and the epoch the run starts at."""
    tc = config.train
    stream = BatchStream(sampler, config.augment, plan.batch_size, _rank_seed(tc, ctx) + epoch, plan.mirror_axes,
                         plan.patch_size)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=tc.num_workers,
                                         persistent_workers=tc.num_workers > 0)
    return iter(loader)


def _train_epoch(trainer: _Trainer, config, schedule: Schedule, state: RunState, progress: float) -> dict:
    """One epoch of steps at the learning rate for ``progress`` (cut short at the budget's deadline), times the
    warm-up factor of each step (:meth:`Schedule.warmup`)."""
    base, done = schedule.lr(progress), [state.step]

    def set_lr() -> None:
        for group in trainer.optimizer.param_groups:
            group["lr"] = base * schedule.warmup(done[0])

    def after_step() -> None:
        done[0] += 1
        set_lr()
        if trainer.average is not None:
            trainer.average.update(trainer.net)

    set_lr()
    epoch = state.epoch + 1
    stats = train_steps(trainer.model, trainer.batches, trainer.optimizer, trainer.loss_fn, trainer.device,
                        trainer.dtype, config.train.iterations_per_epoch, trainer.scaler, deadline=schedule.deadline(),
                        report=lambda done, steps, rate: log.info(f"epoch {epoch:3d}: {done}/{steps} steps, "
                                                                  f"{rate:.2f} steps/s"),
                        on_step=after_step)
    state.step += stats["steps"]
    state.train_seconds += stats["seconds"]
    state.epoch = epoch
    return stats


def _validate_epoch(trainer: _Trainer, config, plan: Plan, val_set: ValidationSet, schedule: Schedule,
                    state: RunState, stats: dict, t0: float, ctx: Context) -> dict | None:
    """Validate the epoch just done when the schedule says so, every rank its share of the cases; the scores
    (:func:`medseg.train.validation.summarise`), or None when not validated or only timed on part of the fold
    (not comparable with whole passes)."""
    ending = stats["steps"] < config.train.iterations_per_epoch or schedule.progress(
        state, time.perf_counter() - t0) >= 1.0
    if not ctx.broadcast(schedule.validates(state, ending)):
        return None
    subset, cases = _validate_timed(trainer, config, plan, val_set, schedule, ctx)
    return summarise(cases, plan.foreground_names) if len(subset.ids) == len(val_set.ids) else None


def _validate_timed(trainer: _Trainer, config, plan: Plan, val_set: ValidationSet, schedule: Schedule,
                    ctx: Context) -> tuple[ValidationSet, dict]:
    """Validate the cases the schedule asks for (:meth:`Schedule.validation_cases`), every rank its share, and
    give the schedule the time it took; the cases validated and every rank's scores by case."""
    v0 = time.perf_counter()
    subset = schedule.validation_cases(val_set)
    settings = inference_settings(config, plan, config.train.val_mirror)
    shares = ctx.gather(validate([trainer.scored], subset.shard(ctx.rank, ctx.world), plan, settings, trainer.device,
                                 trainer.dtype))
    schedule.timed(time.perf_counter() - v0, subset.extent() / val_set.extent())
    return subset, {case: scores for part in shares for case, scores in part.items()}


def _end_epoch(trainer: _Trainer, out: Path, schedule: Schedule, state: RunState, stats: dict, scores: dict | None,
               t0: float, ctx: Context) -> RunState:
    """Rank 0 keeps the best weights, writes the checkpoint and the log line; every rank gets rank 0's state."""
    state.elapsed = time.perf_counter() - schedule.start
    losses = ctx.gather(stats["loss"])
    if ctx.main:
        _after_epoch(out, trainer, state, stats, scores, losses, t0, ctx.world,
                     parse_duration(schedule.train.snapshot_every))
        log.info(_progress_line(out / "log.jsonl", schedule.progress(state), schedule.start))
    return ctx.broadcast(state)


def _after_epoch(out: Path, trainer: _Trainer, state: RunState, stats: dict, scores: dict | None,
                 losses: list, t0: float, world: int, snapshot_every: float | None) -> None:
    """Rank 0 after each epoch: best weights (on validated epochs), the resumable checkpoint, a snapshot when one
    is due (:mod:`medseg.train.snapshots`), the log line."""
    net, optimizer = trainer.net, trainer.optimizer
    if scores is not None:
        state.validated = state.epoch
    if scores is not None and scores["mean"] > state.best:
        state.best, state.best_epoch = scores["mean"], state.epoch
        save_checkpoint(out / "weights.pt", trainer.scored.state_dict())
    checkpoint = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "state": state.to_dict(),
                  "rng": rng_state(trainer.sampler.rng)}
    if trainer.average is not None:
        checkpoint["average"] = trainer.average.state_dict()
    save_checkpoint(out / "checkpoint_last.pt", checkpoint)
    if snapshot_due(state.elapsed, time.perf_counter() - t0, snapshot_every):
        save_snapshot(out, trainer.scored, state.epoch, state.step, state.elapsed)
    record = {"epoch": state.epoch, "step": state.step, "loss": float(np.mean(losses)),
              "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - t0,
              "data_wait_fraction": stats["data_wait_fraction"], "elapsed": state.elapsed, "ranks": world}
    if scores is not None:
        record.update(val_dice=scores["per_class"], val_mean_dice=scores["mean"])
    _append_log(out / "log.jsonl", record)
    update_progress_png(out / "log.jsonl", out / "progress.png")


def _kept_epoch(net: torch.nn.Module, out: Path, state: RunState, ctx: Context) -> int:
    """The epoch whose weights ``weights.pt`` holds for the final validation. Sparse validation can leave the
    last epoch unscored (a budgeted run that stopped between passes): its weights, the most trained, replace an
    early validated epoch's (seen: epoch 1 of 26)."""
    if not ctx.main or state.epoch <= state.validated:
        return state.best_epoch
    save_checkpoint(out / "weights.pt", net.state_dict())
    log.info(f"epoch {state.epoch} was not validated: its weights (the most trained) go to the final validation")
    return state.epoch


def _optimizer(net, tc):
    if tc.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=tc.lr, momentum=0.99, nesterov=True, weight_decay=tc.weight_decay)
    return torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)  # checked at load


def _progress_line(log: Path, progress: float, start: float) -> str:
    record = json.loads(log.read_text().splitlines()[-1])
    per_class = "  ".join(f"{name} {d:.3f}" for name, d in record.get("val_dice", {}).items())
    scores = f"val Dice {per_class}  (mean {record['val_mean_dice']:.3f})" if per_class else "not validated"
    elapsed = time.perf_counter() - start
    eta = elapsed / max(progress, 1e-6) - elapsed
    return (f"epoch {record['epoch']:3d}  loss {record['loss']:.4f}  {scores}  {record['epoch_seconds']:.0f} s  "
            f"data wait {100 * record['data_wait_fraction']:.0f}%  ETA {clock(max(eta, 0))}")


def _append_log(path: Path, record: dict) -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    write_text_atomic(path, "\n".join(lines + [json.dumps(record)]) + "\n")


def _truncate_log(path: Path, epoch: int) -> None:
    if path.exists():
        kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epoch]
        write_text_atomic(path, "\n".join(kept) + ("\n" if kept else ""))
