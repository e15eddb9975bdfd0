"""Plain training functions (no trainer class): the batch stream, the deep-supervision loss, the steps."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import set_track_meta

from medseg.model.device import autocast
from medseg.train.augment import augment_batch, build_augmentation

# Progress inside an epoch is reported at most this often (seconds).
REPORT_SECONDS = 30.0


class BatchStream(torch.utils.data.IterableDataset):
    """Endless augmented batches ``(images, labels, contoured)`` (see :class:`medseg.train.sampling.Batch`),
    produced in DataLoader worker processes (one seed per worker). Flips use only ``mirror_axes`` (spatial
    axes 0-2, the plan's ``mirror_axes``). With ``patch_size``, the sampler's blocks (its ``source_size``) are
    cut to it by the spatial augmentation (:func:`medseg.train.augment.build_augmentation`)."""

    def __init__(self, sampler, augment_config, batch_size: int, seed: int,
                 mirror_axes: Sequence[int] = (0, 1, 2), patch_size: Sequence[int] | None = None):
        super().__init__()
        self.sampler, self.augment_config, self.batch_size, self.seed = sampler, augment_config, batch_size, seed
        self.mirror_axes = tuple(int(a) for a in mirror_axes)
        self.patch_size = None if patch_size is None else tuple(int(p) for p in patch_size)

    def __iter__(self):
        set_track_meta(False)
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        self.sampler.rng = np.random.default_rng([self.seed, worker])
        compose = build_augmentation(self.augment_config, seed=self.seed * 1000 + worker,
                                     mirror_axes=self.mirror_axes, patch_size=self.patch_size)
        while True:
            batch = self.sampler.batch(self.batch_size)
            images, labels = augment_batch(compose, batch.images, batch.labels)
            yield torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(batch.contoured)


def deep_supervision_loss(loss_fn, output: torch.Tensor, target: torch.Tensor, *extra) -> torch.Tensor:
    """Loss over DynUNet's stacked outputs ``(B, 1 + levels, K, ...)`` with weights 1, 1/2, 1/4... (normalised).

    ``extra`` (the ``(B, K)`` contoured mask for :func:`medseg.train.losses.marginal_dice_ce`) goes to every
    level's ``loss_fn(output, target, *extra)``; a plain ``(B, K, ...)`` output is one level.
    """
    if output.dim() == target.dim():
        return loss_fn(output, target, *extra)
    weights = torch.tensor([0.5**i for i in range(output.shape[1])])
    weights = weights / weights.sum()
    return sum(w * loss_fn(output[:, i], target, *extra) for i, w in enumerate(weights))


def train_steps(net, batches, optimizer, loss_fn, device, dtype, steps: int, scaler=None,
                deadline: float | None = None, report=None, on_step=None) -> dict:
    """Run up to ``steps`` optimisation steps on ``(images, labels, contoured)`` batches with
    ``loss_fn(output, labels, contoured)``.

    Args:
        deadline: ``time.perf_counter()`` value after which no further step starts (a time budget's hard
            stop, mid-epoch if need be); None: all ``steps``.
        report: Called as ``report(done, steps, steps_per_second)`` at most every :data:`REPORT_SECONDS`.
        on_step: Called after every optimiser step (e.g. to update a weight average).

    Returns:
        Mean loss, steps done, seconds, and the fraction of time spent waiting for data.
    """
    net.train()
    losses, wait, start = [], 0.0, time.perf_counter()
    last_report = start
    for _ in range(steps):
        if deadline is not None and losses and time.perf_counter() >= deadline:
            break
        t0 = time.perf_counter()
        images, labels, contoured = next(batches)
        wait += time.perf_counter() - t0
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        contoured = contoured.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            output = net(images)
        loss = deep_supervision_loss(loss_fn, output.float(), labels, contoured)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            optimizer.step()
        if on_step is not None:
            on_step()
        losses.append(float(loss.detach()))
        now = time.perf_counter()
        if report is not None and now - last_report >= REPORT_SECONDS:
            report(len(losses), steps, len(losses) / (now - start))
            last_report = now
    total = time.perf_counter() - start
    return {"loss": float(np.mean(losses)), "steps": len(losses), "data_wait_fraction": wait / max(total, 1e-9),
            "seconds": total}
