"""The training loss: Dice + cross-entropy, marginal over the classes a case did not contour.

With partial annotations (:attr:`medseg.data.dataset.Case.annotated`) an organ that was not contoured in
a case is unknown there, not background. The marginal loss of Shi et al. (Marginal loss and exclusion loss
for partially supervised multi-organ segmentation, Medical Image Analysis 70:101979, 2021) therefore merges,
for each sample, the softmax probabilities of its uncontoured classes into background
(``p_bg' = p_bg + sum(p_uncontoured)``) and scores only background and the contoured classes: predicting an
uncontoured organ where the label map says background costs nothing, since both are "background or an organ
nobody drew". When every class is contoured this equals MONAI's
``DiceCELoss(to_onehot_y=True, softmax=True, batch=True)`` (the same operations on the same numbers).

Built from MONAI's ``DiceLoss`` (on the merged probabilities, per class, so smoothing and batch reduction are
the ones training used before) and torch's ``nll_loss`` on log marginal probabilities taken with
``logsumexp`` (``CrossEntropyLoss`` takes logits of a fixed class set and cannot merge classes per sample).
A batch whose samples contoured every class takes the plain path (``cross_entropy`` + ``DiceLoss``): the same
value, in 23-25 ms instead of 47-57 ms per step for 3 deep-supervision heads on the hippocampus patch
(4x3x40x56x40, AMD EPYC 2 cores, 2026-11-26), which kept medseg's training steps below 0.95x of a plain
MONAI loop (``benchmarks/train_speed.py``).

For runs of :data:`COMPILE_MIN_STEPS` steps or more the loss runs under ``torch.compile``, which fuses its
element-wise passes: on an OpenKBP batch (2x8x96x96x128, one sample without esophagus and larynx, one without
mandible), forward and backward took 1064 ms eagerly and 447 ms compiled (all classes contoured: 358 -> 237 ms),
the same values; AMD EPYC (Zen 5, no AMX), 2 cores, torch 2.13, 2026-12-03. Where compiling fails (no C++
compiler, a backend error) the eager loss takes over for the rest of the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from medseg.model.device import compile_allowed

log = logging.getLogger(__name__)

# A run this long compiles its loss (compiling costs seconds, the OpenKBP step above gains 0.6 s).
COMPILE_MIN_STEPS = 500


def training_loss(dice_weight: float, ce_weight: float, batch_dice: bool, steps: float) -> Callable:
    """The loss ``medseg train`` optimises: :func:`marginal_dice_ce` with the config's weights, compiled
    (:class:`_Compiled`) when the run is expected to take ``steps`` >= :data:`COMPILE_MIN_STEPS` and
    ``MEDSEG_COMPILE`` is not ``0``."""
    if not compile_allowed() or steps < COMPILE_MIN_STEPS:
        return partial(marginal_dice_ce, lambda_dice=dice_weight, lambda_ce=ce_weight, batch=batch_dice)
    return _Compiled(dice_weight, ce_weight, batch_dice)


class _Compiled:
    """:func:`marginal_dice_ce` with both of its paths under ``torch.compile`` (the choice between them stays in
    Python: no graph break); on the first failure to compile, the eager loss from then on (with a warning)."""

    def __init__(self, dice_weight: float, ce_weight: float, batch_dice: bool):
        self.weights = (dice_weight, ce_weight, batch_dice)
        self.plain, self.marginal = torch.compile(_dice_ce), torch.compile(_marginal)
        self.failed = False

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, contoured: torch.Tensor) -> torch.Tensor:
        if not self.failed:
            try:
                if bool(contoured[:, 1:].all()):
                    return self.plain(logits, target, *self.weights)
                return self.marginal(logits, target, contoured, *self.weights)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: the same loss, eagerly
                log.warning("compiled loss unavailable, computing it eagerly (%s)", str(exc).splitlines()[0][:200])
                self.failed = True
        return marginal_dice_ce(logits, target, contoured, *self.weights)


def marginal_dice_ce(logits: torch.Tensor, target: torch.Tensor, contoured: torch.Tensor,
                     lambda_dice: float = 1.0, lambda_ce: float = 1.0, batch: bool = True) -> torch.Tensor:
    """Marginal Dice + cross-entropy over the classes each sample contoured.

    Args:
        logits: ``(B, K, *spatial)`` network output.
        target: ``(B, 1, *spatial)`` class indices ``0..K-1``.
        contoured: ``(B, K)`` bool, which classes each sample contoured; background (class 0) always counts
            as contoured. A class contoured by no sample of the batch is left out of the Dice mean.
        batch: Dice over the whole batch per class (nnU-Net's batch Dice); False: per sample and class, as
            MONAI's ``DiceCELoss`` default, averaged over the (sample, class) pairs the sample contoured.

    Returns:
        A scalar: ``lambda_dice`` x mean of ``1 - Dice`` + ``lambda_ce`` x mean voxel cross-entropy, both on the
        merged classes.
    """
    if bool(contoured[:, 1:].all()):
        return _dice_ce(logits, target, lambda_dice, lambda_ce, batch)
    return _marginal(logits, target, contoured, lambda_dice, lambda_ce, batch)


def _dice_ce(logits: torch.Tensor, target: torch.Tensor, lambda_dice: float, lambda_ce: float,
             batch: bool) -> torch.Tensor:
    """Dice + cross-entropy when every class is contoured (MONAI's DiceCELoss with ``batch``)."""
    dice = DiceLoss(to_onehot_y=True, softmax=True, batch=batch)(logits, target)
    return lambda_dice * dice + lambda_ce * F.cross_entropy(logits, target[:, 0].long())


def _marginal(logits: torch.Tensor, target: torch.Tensor, contoured: torch.Tensor, lambda_dice: float,
              lambda_ce: float, batch: bool) -> torch.Tensor:
    """The marginal loss proper (module docstring), for any ``contoured`` mask."""
    known = contoured.to(device=logits.device, dtype=torch.bool).clone()
    known[:, 0] = True
    shape = (*known.shape, *[1] * (logits.dim() - 2))  # (B, K, 1, 1, 1): broadcast over voxels
    merged_into_bg = ~known  # the classes whose probability goes to background: the uncontoured ones...
    merged_into_bg[:, 0] = True  # ... and background itself
    # A voxel of an uncontoured class counts as background (a label map `medseg check` accepts has none).
    merged_target = target.long() * known.gather(1, target.long().flatten(1)).view_as(target)
    log_probs = F.log_softmax(logits, 1)
    # log(p_bg'), stably; the targets never pick an uncontoured class's entry, so CE sees only merged classes.
    log_bg = torch.logsumexp(log_probs.masked_fill(~merged_into_bg.view(shape), float("-inf")), 1, keepdim=True)
    ce = F.nll_loss(torch.cat([log_bg, log_probs[:, 1:]], 1), merged_target[:, 0])
    probs = torch.softmax(logits, 1)
    bg = (probs * merged_into_bg.view(shape)).sum(1, keepdim=True)
    # (B, K, ...): p_bg' then the contoured classes; an uncontoured class is 0 in prediction and target of that
    # sample, so it adds nothing to that class's batch Dice sums.
    marginal = torch.cat([bg, (probs * known.view(shape))[:, 1:]], 1)
    onehot = F.one_hot(merged_target[:, 0], logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    per_class = DiceLoss(batch=batch, reduction="none")(marginal, onehot)
    dice = per_class.flatten()[known.any(0)].mean() if batch else per_class.flatten(1)[known].mean()
    return lambda_dice * dice + lambda_ce * ce
