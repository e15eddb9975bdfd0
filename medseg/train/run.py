"""``medseg train``: dataset -> model folder. Plan, preprocess (cached), train, validate, checkpoint.

The model folder (what ``medseg infer`` loads) holds: ``config.yaml`` (resolved), ``plan.json``,
``fingerprint.json``, ``labels.json``, ``splits.json``, ``weights.pt`` (best validated epoch; the last
epoch's when it was not validated), ``checkpoint_last.pt`` (everything needed to resume), ``log.jsonl``,
``validation.json``, ``versions.json`` and ``SHA256SUMS`` (see :mod:`medseg.model.folder`; ``medseg export`` copies what
inference needs). Every file is written atomically, so SIGKILL at any moment leaves it consistent.

Under ``torchrun`` every rank trains on its own patches (DistributedDataParallel averages gradients);
rank 0 alone plans, preprocesses, writes and logs; validation cases are shared out between ranks.
Validation runs the inference path on original grids (:mod:`medseg.train.validation`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medseg.config import RunConfig, config_from_dict, parse_duration, save_config
from medseg.errors import MedsegError
from medseg.io.atomic import make_output_dir, remove_stale_temporaries, write_text_atomic
from medseg.model.distributed import Context
from medseg.model.folder import ModelFolder
from medseg.model.inference import InferenceSettings, component_rules
from medseg.model.networks import network_entry
from medseg.train.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from medseg.train.data import load_or_plan, prepare_cases, refuse_bad_dataset
from medseg.train.progress_plot import update_progress_png
from medseg.train.splits import split_cases

# Validation between epochs may take at most this share of the training time.
VAL_SHARE = 0.1
# The first epoch times validation on at most this many cases (the whole fold when it is no larger). Timing all
# 41 OpenKBP CTs took 186 s of a 25-minute budget (AMD EPYC, 2 cores, 2026-11-26) to score an untrained network.
TIMING_CASES = 4


def train(dataset_path, out_dir, config: RunConfig, fold: int = 0, resume: bool = False, device: str = "auto",
          echo: Callable[[str], None] = print) -> dict:
    """Train one fold and write the model folder ``out_dir``. Returns the final summary.

    When launched by ``torchrun`` (``WORLD_SIZE`` > 1) the run is distributed; see :mod:`medseg.model.distributed`.
    """
    from medseg.model.distributed import setup, shutdown

    ctx, dev = setup(device)
    try:
        return _train(dataset_path, Path(out_dir), config, fold, resume, dev, ctx,
                      echo if ctx.main else (lambda _: None))
    finally:
        shutdown(ctx)


def _train(dataset_path, out: Path, config: RunConfig, fold: int, resume: bool, dev, ctx: Context, echo) -> dict:
    from medseg.data import load_dataset
    from medseg.train.validation import load_validation

    start = time.perf_counter()
    last = out / "checkpoint_last.pt"
    if last.exists() and not resume:
        raise MedsegError("run folder already has a checkpoint; add --resume to continue it or pick a new folder", out)
    if resume and (out / "config.yaml").exists():
        import yaml

        config = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()), str(out / "config.yaml"))
    network_entry(config.model.name)  # an unknown network is refused before any work
    tc = config.train
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    torch.manual_seed(tc.seed)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    dataset = load_dataset(dataset_path)
    failure = None
    if ctx.main:  # rank 0 checks, plans, splits and fills the cache; the others then read what it wrote
        try:
            make_output_dir(out)
            remove_stale_temporaries(out)  # left by a run that was killed mid-write
            refuse_bad_dataset(dataset, echo)
            budget = parse_duration(tc.time_budget)
            _prepare(dataset, config, out, fold, echo, dev, None if budget is None else budget - (
                time.perf_counter() - start))
        except MedsegError as exc:
            failure = exc
    if ctx.broadcast(str(failure) if failure else None):  # every rank stops together on a refused dataset
        raise failure if failure else MedsegError("rank 0 refused the dataset (see its message)")
    plan, _ = load_or_plan(dataset, config, out, echo)
    splits = split_cases(dataset, tc.folds, tc.seed, out / "splits.json", tc.split_group)
    train_ids, val_ids = splits[fold]["train"], splits[fold]["val"]
    train_data = prepare_cases(dataset, train_ids, plan, out / "cache", echo)
    val_set = load_validation(dataset, val_ids)
    echo(f"preprocessed {len(train_ids)} training cases, loaded {len(val_ids)} validation cases in "
         f"{time.perf_counter() - start:.0f} s" + (f"; {ctx.world} ranks" if ctx.world > 1 else ""))
    dtype = _precision(config, plan, dev, ctx, echo)
    net, state = _fit(config, plan, train_data, val_set, out, dev, dtype, start, echo, resume, ctx)
    final = None
    if ctx.main:
        final = _final_validation(net, config, val_set, plan, out, dev, dtype, echo)
    ctx.barrier()
    return _finish(out, plan, state, start, echo, final) if ctx.main else {"rank": ctx.rank, **state}


def _prepare(dataset, config, out: Path, fold: int, echo, dev, seconds_left: float | None) -> None:
    plan, _ = load_or_plan(dataset, config, out, echo, dev, seconds_left)
    save_config(config, out / "config.yaml")
    splits = split_cases(dataset, config.train.folds, config.train.seed, out / "splits.json",
                         config.train.split_group)
    if not 0 <= fold < len(splits):
        raise MedsegError(f"--fold {fold} out of range (0..{len(splits) - 1})")
    prepare_cases(dataset, splits[fold]["train"], plan, out / "cache", echo)


def _precision(config, plan, dev, ctx: Context, echo) -> torch.dtype | None:
    """The autocast dtype: ``train.precision``, where ``auto`` is measured on this machine by rank 0."""
    from medseg.model.device import autocast_dtype, precision_for

    chosen = None
    if ctx.main:
        choice = precision_for(plan, config, dev)
        chosen = choice.precision
        echo(f"precision {chosen} ({choice.reason})")
    return autocast_dtype(ctx.broadcast(chosen))


def _settings(config, plan, mirror: bool) -> InferenceSettings:
    """The model's own inference settings (what ``medseg infer`` uses by default), mirroring as asked."""
    labels = dict(plan.labels)
    return InferenceSettings(overlap=config.infer.overlap, mirror=mirror, sw_batch_size=config.infer.sw_batch_size,
                             rules=component_rules(config.postprocess.rules, labels))


def _final_validation(net, config, val_set, plan, out, dev, dtype, echo) -> dict:
    """Best weights, held-out fold, the inference path on original grids, without post-processing; then the
    rules chosen on these raw label maps (postprocess.json) and the final scores with them (validation.json)."""
    from dataclasses import asdict, replace

    from medseg.train.validation import predict_labels, summarise

    net.load_state_dict(load_checkpoint(out / "weights.pt"))
    mirror = config.train.final_tta
    settings = replace(_settings(config, plan, mirror), rules={})  # rules are applied to the raw maps below
    t0 = time.perf_counter()
    raw = list(predict_labels([net], val_set, plan, settings, dev, dtype))
    cases, rules, choice = _choose_postprocess(raw, config, val_set, plan, out, echo)
    result = {**summarise(cases, plan.foreground_names), "mirror": mirror, "overlap": settings.overlap,
              "postprocess": bool(rules), "postprocess_rules": {str(v): asdict(r) for v, r in sorted(rules.items())},
              "postprocess_choice": choice}
    write_text_atomic(out / "validation.json", json.dumps(result, indent=1))
    per_class = "  ".join(f"{k} {v:.4f}" for k, v in result["per_class"].items())
    echo(f"final validation ({len(val_set.ids)} cases, original grids{', mirroring' if mirror else ''}): "
         f"{per_class}  mean {result['mean']:.4f}  ({time.perf_counter() - t0:.0f} s)")
    return result


def _choose_postprocess(raw: list[np.ndarray], config, val_set, plan, out: Path, echo) -> tuple[dict, dict, dict]:
    """Choose rules (:mod:`medseg.postprocess.choose`) on the raw validation label maps for the labels the
    config gives none, write them to postprocess.json, and score the maps post-processed with them and the
    config's rules. Returns (Dice per case and label, the rules applied, the choice by label name)."""
    from dataclasses import asdict

    from medseg.postprocess import choose_rules, describe, postprocess
    from medseg.postprocess.choose import MIN_GAIN
    from medseg.train.validation import score_labels

    labels = dict(plan.labels)
    fixed = component_rules(config.postprocess.rules, labels)
    spacings = [image.spacing for image in val_set.images]
    choices = choose_rules(raw, [truth.array for truth in val_set.labels], spacings,
                           [{v for v in labels if case.contoured(v)} for case in val_set.cases],
                           {v: name for v, name in labels.items() if v != 0 and v not in fixed})
    chosen = {v: c.rule for v, c in choices.items() if c.changed}
    report = {c.name: c.to_dict() for c in choices.values()}
    ModelFolder(out).write_postprocess({v: asdict(rule) for v, rule in chosen.items()}, report)
    for value in chosen:
        c = choices[value]
        detection = (f"; lesion sensitivity {c.sensitivity_before:.3f} -> {c.sensitivity_after:.3f}"
                     if c.lesion_like else "")
        echo(f"post-processing {c.name}: {describe(c.rule)} (validation Dice {c.dice_before:.4f} -> "
             f"{c.dice_after:.4f}, +{c.gain:.4f} over {c.cases} cases{detection})")
    if not chosen:
        echo(f"post-processing: no rule raised a label's validation Dice by more than {MIN_GAIN}; none chosen")
    rules = {**chosen, **fixed}
    final = [postprocess(m, rules, spacing)[0] for m, spacing in zip(raw, spacings, strict=True)] if rules else raw
    return score_labels(final, val_set, labels), rules, report


def tune_postprocess(run_dir, dataset_path, device: str = "auto", echo: Callable[[str], None] = print) -> dict:
    """Choose post-processing for a finished run folder (e.g. one trained before medseg chose it): training's
    final validation again (best weights, the run's validation fold of ``dataset_path``, its settings), then
    postprocess.json and validation.json rewritten and the folder re-summed. Returns validation.json's content.
    """
    from medseg.data import load_dataset
    from medseg.model import build_network
    from medseg.model.device import autocast_dtype, precision_for, resolve_device
    from medseg.train.validation import load_validation

    folder = ModelFolder(run_dir)
    folder.check()
    plan, config = folder.load_plan(), folder.load_config()
    val_ids = _validation_ids(folder.path)
    dataset = load_dataset(dataset_path)
    if missing := sorted(set(val_ids) - {c.id for c in dataset.cases}):
        raise MedsegError(f"{len(missing)} validation case(s) of the run are not in this dataset (e.g. "
                          f"{missing[0]}); give the dataset the run was trained on", dataset_path)
    dev = resolve_device(device)

    dtype = autocast_dtype(precision_for(plan, config, dev).precision)  # training's final validation's
    result = _final_validation(build_network(plan, config.model).to(dev), config, load_validation(dataset, val_ids),
                               plan, folder.path, dev, dtype, echo)
    folder.reseal()
    return result


def _validation_ids(run: Path) -> list[str]:
    """The run's validation fold: the split in splits.json whose validation cases validation.json scored."""
    try:
        scored = set(json.loads((run / "validation.json").read_text())["cases"])
        splits = json.loads((run / "splits.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        raise MedsegError("not a finished run folder of `medseg train`: validation.json and splits.json are needed "
                          "(an exported model has neither)", run) from None
    for split in splits:
        if set(split["val"]) == scored:
            return list(split["val"])
    raise MedsegError("the cases of validation.json are no validation fold of splits.json", run)


def _fit(config, plan, train_data, val_set, out, dev, dtype, start, echo, resume, ctx: Context):
    from functools import partial

    from medseg.model import build_network
    from medseg.train.loop import BatchStream, train_steps
    from medseg.train.losses import marginal_dice_ce
    from medseg.train.sampling import PatchSampler
    from medseg.train.validation import summarise, validate

    tc = config.train
    net = build_network(plan, config.model).to(dev)
    optimizer = _optimizer(net, tc)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 and dev.type == "cuda" else None
    # DiceCE, marginal over each case's uncontoured classes (plain DiceCE when every class is contoured)
    loss_fn = partial(marginal_dice_ce, lambda_dice=tc.dice_weight, lambda_ce=tc.ce_weight, batch=tc.batch_dice)
    classes = list(range(1, len(plan.labels)))  # cached labels are class indices 0..K-1
    seed = tc.seed + 1000 * ctx.rank  # each rank draws its own patches
    images, labels, contoured = train_data
    sampler = PatchSampler(images, labels, plan.patch_size, classes, tc.foreground_fraction, seed, contoured)
    state = {"epoch": 0, "step": 0, "train_seconds": 0.0, "best": -1.0, "best_epoch": -1, "elapsed": 0.0}
    last = out / "checkpoint_last.pt"
    if resume and last.exists():
        ckpt = load_checkpoint(last)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        if ctx.main:
            restore_rng(ckpt["rng"], sampler.rng)
        start -= state.get("elapsed", 0.0)  # a time budget counts the interrupted run's time too
        _truncate_log(out / "log.jsonl", state["epoch"]) if ctx.main else None
        echo(f"resumed at epoch {state['epoch']} (best mean Dice {state['best']:.4f})")
    model = torch.nn.parallel.DistributedDataParallel(net) if ctx.active else net
    budget = parse_duration(tc.time_budget)
    total_steps = tc.epochs * tc.iterations_per_epoch
    stream = BatchStream(sampler, config.augment, plan.batch_size, seed + state["epoch"], plan.mirror_axes)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=tc.num_workers,
                                         persistent_workers=tc.num_workers > 0)
    batches = iter(loader)
    val_seconds = epoch_seconds = val_spent = 0.0
    # The last epoch is validated on its own only when the final validation scores differently (mirroring);
    # otherwise the final validation scores its weights (and keeps the budget's minutes for training).
    same_as_final = tc.val_tta == tc.final_tta
    passes = _final_passes(tc.final_tta, plan) + (0 if same_as_final else 1)  # kept free at the end
    while True:
        # Rank 0 decides progress (and so the learning rate and when to stop) for every rank.
        progress = ctx.broadcast(_progress(state, total_steps, budget, start, epoch_seconds, val_seconds,
                                           passes, ctx))
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = _lr(tc, progress)
        t0 = time.perf_counter()
        epoch = state["epoch"] + 1
        stats = train_steps(model, batches, optimizer, loss_fn, dev, dtype, tc.iterations_per_epoch, scaler,
                            deadline=_deadline(budget, start, val_seconds, passes, ctx),
                            report=lambda done, steps, rate, epoch=epoch: echo(
                                f"epoch {epoch:3d}: {done}/{steps} steps, {rate:.2f} steps/s"))
        state["step"] += stats["steps"]
        state["train_seconds"] += stats["seconds"]
        state["epoch"] += 1
        ending = stats["steps"] < tc.iterations_per_epoch or _progress(
            state, total_steps, budget, start, time.perf_counter() - t0, val_seconds, passes, ctx) >= 1.0
        scores = None
        if ctx.broadcast(_validate_now(state["epoch"], ending and not same_as_final, val_seconds, val_spent,
                                       state["train_seconds"])):
            v0 = time.perf_counter()
            subset = val_set.first(TIMING_CASES) if state["epoch"] == 1 else val_set
            cases = _merge(ctx.gather(validate([net], subset.shard(ctx.rank, ctx.world), plan,
                                               _settings(config, plan, tc.val_tta), dev, dtype)))
            spent = time.perf_counter() - v0
            val_spent += spent
            val_seconds = spent * val_set.extent() / subset.extent()  # a whole pass, estimated by volume
            # a timing pass on part of the fold is not comparable with whole passes: logged as not validated
            scores = summarise(cases, plan.foreground_names) if len(subset.ids) == len(val_set.ids) else None
        epoch_seconds = time.perf_counter() - t0
        state["elapsed"] = time.perf_counter() - start
        losses = ctx.gather(stats["loss"])
        if ctx.main:
            _after_epoch(out, net, optimizer, sampler, state, stats, scores, losses, t0, ctx.world)
            echo(_progress_line(out / "log.jsonl", _progress(state, total_steps, budget, start, epoch_seconds,
                                                             val_seconds, passes, ctx), start))
        state = ctx.broadcast(state)
    if ctx.main and state["epoch"] > state.get("validated", state["best_epoch"]):
        # Sparse validation can leave the last epoch unscored (a budgeted run that stopped between passes):
        # keep its weights, the most trained, rather than an early validated epoch's (seen: epoch 1 of 26).
        save_checkpoint(out / "weights.pt", net.state_dict())
        state["weights_epoch"] = state["epoch"]
        echo(f"epoch {state['epoch']} was not validated: its weights (the most trained) go to the final validation")
    return net, state


def _after_epoch(out: Path, net, optimizer, sampler, state: dict, stats: dict, scores: dict | None,
                 losses: list, t0: float, world: int) -> None:
    """Rank 0 after each epoch: best weights (on validated epochs), the resumable checkpoint, the log line."""
    if scores is not None:
        state["validated"] = state["epoch"]
    if scores is not None and scores["mean"] > state["best"]:
        state.update(best=scores["mean"], best_epoch=state["epoch"])
        save_checkpoint(out / "weights.pt", net.state_dict())
    save_checkpoint(out / "checkpoint_last.pt", {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                                 "state": state, "rng": rng_state(sampler.rng)})
    record = {"epoch": state["epoch"], "step": state["step"], "loss": float(np.mean(losses)),
              "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - t0,
              "data_wait_fraction": stats["data_wait_fraction"], "elapsed": state["elapsed"], "ranks": world}
    if scores is not None:
        record.update(val_dice=scores["per_class"], val_mean_dice=scores["mean"])
    _append_log(out / "log.jsonl", record)
    update_progress_png(out / "log.jsonl", out / "progress.png")


def _validate_now(epoch: int, last: bool, val_seconds: float, val_spent: float, train_seconds: float) -> bool:
    """Validate after the first epoch (to time it, on :data:`TIMING_CASES` cases), the ``last`` one, and any
    other while validation has taken under :data:`VAL_SHARE` of the training time so far (a 41-case CT fold
    can take minutes per pass)."""
    return epoch == 1 or last or val_spent + val_seconds <= VAL_SHARE * train_seconds


def _final_passes(final_tta: bool, plan) -> int:
    """Network passes per window in the final validation: the mirrored flips of the plan's axes, or one."""
    return 2 ** len(plan.mirror_axes) if final_tta else 1


def _merge(per_rank: list[dict]) -> dict:
    return {case: scores for part in per_rank for case, scores in part.items()}


def _optimizer(net, tc):
    if tc.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=tc.lr, momentum=0.99, nesterov=True, weight_decay=tc.weight_decay)
    return torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)  # checked at load


def _progress(state, total_steps, budget, start, epoch_seconds: float, val_seconds: float, passes: int,
              ctx: Context) -> float:
    """Fraction of the run done: by steps, or by wall-clock when a time budget is set (1.0: stop)."""
    if budget is None:
        return state["step"] / max(total_steps, 1)
    return (time.perf_counter() - start) / max(_usable(budget, epoch_seconds, val_seconds, passes, ctx), 1.0)


def _deadline(budget: float | None, start: float, val_seconds: float, passes: int, ctx: Context) -> float | None:
    """When the current epoch must stop stepping (mid-epoch if need be) so that the rest still fits the
    budget; None without a budget, and under torchrun, where every rank must take the same number of steps."""
    if budget is None or ctx.world > 1:
        return None
    return start + _usable(budget, 0.0, val_seconds, passes, ctx)


def _usable(budget: float, epoch_seconds: float, val_seconds: float, passes: int, ctx: Context) -> float:
    """Seconds of the budget for training steps. Kept free: ``passes`` validation passes (the final
    validation's mirrored flips with ``final_tta``, plus the last epoch's own pass when it differs) with 20 %
    margin, and 20 s for writing the model folder; before any validation was timed, 15 % of the budget. Under torchrun
    epochs cannot stop midway, so the last epoch's length stays free too (an epoch only starts when it can
    finish)."""
    validations = passes * val_seconds * 1.2 if val_seconds else 0.15 * budget
    return budget - validations - 20.0 - (epoch_seconds if ctx.world > 1 else 0.0)


def _lr(tc, progress: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    if tc.lr_schedule == "poly":
        return tc.lr * (1 - progress) ** 0.9
    if tc.lr_schedule == "cosine":
        return tc.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return tc.lr


def _progress_line(log: Path, progress, start) -> str:
    record = json.loads(log.read_text().splitlines()[-1])
    per_class = "  ".join(f"{name} {d:.3f}" for name, d in record.get("val_dice", {}).items())
    scores = f"val Dice {per_class}  (mean {record['val_mean_dice']:.3f})" if per_class else "not validated"
    elapsed = time.perf_counter() - start
    eta = elapsed / max(progress, 1e-6) - elapsed
    return (f"epoch {record['epoch']:3d}  loss {record['loss']:.4f}  {scores}  {record['epoch_seconds']:.0f} s  "
            f"data wait {100 * record['data_wait_fraction']:.0f}%  ETA {_clock(max(eta, 0))}")


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def _append_log(path: Path, record: dict) -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    write_text_atomic(path, "\n".join(lines + [json.dumps(record)]) + "\n")


def _truncate_log(path: Path, epoch: int) -> None:
    if path.exists():
        kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epoch]
        write_text_atomic(path, "\n".join(kept) + ("\n" if kept else ""))


def _finish(out: Path, plan, state, start, echo, final: dict) -> dict:
    model_id = ModelFolder(out).seal(plan.labels)
    total = time.perf_counter() - start
    kept = state.get("weights_epoch", state["best_epoch"])
    summary = {"best_mean_dice": state["best"], "best_epoch": state["best_epoch"], "weights_epoch": kept,
               "epochs": state["epoch"], "seconds": total, "model_dir": str(out), "model_id": model_id,
               "validation": final}
    echo(f"done: {state['epoch']} epochs in {_clock(total)}; final validation mean Dice {final['mean']:.4f} with "
         f"epoch {kept}'s weights; model {model_id} in {out} (`medseg export` makes a copy to share)")
    return summary
