"""Foreground oversampling spread over classes, and the Dice+CE deep-supervision loss."""

import numpy as np
import torch
from monai.losses import DiceCELoss

from medseg.train.data import label_classes
from medseg.train.loop import deep_supervision_loss
from medseg.train.losses import marginal_dice_ce
from medseg.train.sampling import PatchSampler


def _cases(n=10):
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(n):
        lab = np.zeros((40, 40, 20), np.int16)
        lab[5:30, 5:30, 3:15] = 1  # a big organ in every case
        if i == 0:
            lab[32:34, 32:34, 16:18] = 2  # a tiny lesion in one case only: 8 voxels in 320,000
        labels.append(lab)
        images.append(rng.normal(size=(1, 40, 40, 20)).astype(np.float32))
    return images, labels


def test_rare_class_is_seen_often_and_a_third_is_foreground():
    images, labels = _cases()
    sampler = PatchSampler(images, labels, (16, 16, 8), classes=[1, 2], foreground_fraction=0.33, seed=1)
    with_lesion = centred = total = 0
    for _ in range(200):
        batch = sampler.batch(3)
        labs, chosen = batch.labels, batch.centred
        total += len(chosen)
        centred += sum(k is not None for k in chosen)
        with_lesion += int(sum((lab == 2).any() for lab in labs))
    assert centred / total >= 1 / 3
    # The lesion is centred in ~half of the forced patches (1 of 2 classes): ~1/6 of all patches.
    assert with_lesion / total > 0.12


def test_patches_are_padded_when_image_is_smaller():
    images, labels = _cases(1)
    sampler = PatchSampler(images, labels, (48, 48, 24), classes=[1, 2], seed=0)
    batch = sampler.batch(2)
    assert batch.images.shape == (2, 1, 48, 48, 24) and batch.labels.shape == (2, 1, 48, 48, 24)
    assert batch.labels.sum() > 0 and batch.contoured.shape == (2, 3) and batch.contoured.all()


def test_deep_supervision_loss_prefers_correct_prediction():
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    target = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    target[:, :, 2:6, 2:6, 2:6] = 1
    good = torch.stack([(target[:, 0] == k).float() * 20 - 10 for k in (0, 1)], 1)  # (B, K, ...)
    bad = -good
    stacked_good = torch.stack([good, good, good], 1)  # (B, 1 + levels, K, ...)
    stacked_bad = torch.stack([bad, bad, bad], 1)
    assert deep_supervision_loss(loss_fn, stacked_good, target) < 0.05
    assert deep_supervision_loss(loss_fn, stacked_bad, target) > 1.0
    assert torch.isclose(deep_supervision_loss(loss_fn, stacked_good, target), loss_fn(good, target))


def test_labels_with_values_0_5_7_sample_and_train_as_classes_0_1_2():
    images, labels = _cases(3)
    values = [0, 5, 7]
    labels = [label_classes(np.asarray(values, np.int16)[lab], values) for lab in labels]
    sampler = PatchSampler(images, labels, (16, 16, 8), classes=[1, 2], foreground_fraction=1.0, seed=0)
    batch = sampler.batch(4)
    labs, chosen = batch.labels, batch.centred
    assert sampler.classes == [1, 2] and set(chosen) <= {1, 2} and set(np.unique(labs).tolist()) <= {0, 1, 2}
    logits = torch.zeros(4, len(values), 16, 16, 8, requires_grad=True)
    loss = marginal_dice_ce(logits, torch.from_numpy(labs).long(), torch.from_numpy(batch.contoured))
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None


def test_compiled_loss_gives_the_eager_loss_and_gradients(data_path, monkeypatch):
    """A long run's loss runs under torch.compile with the same value and gradients as the eager marginal loss
    (real OpenKBP label maps, a partially contoured batch and a fully contoured one); a short run, or
    MEDSEG_COMPILE=0, keeps it eager; a compiler that fails leaves the eager loss in charge, with a warning."""
    import nibabel as nib

    from medseg.train import losses

    target = torch.stack([torch.from_numpy(np.asarray(nib.load(data_path(f"openkbp/labelsTr/{c}.nii.gz")).dataobj)
                                           [32:64, 32:64, 40:72].astype(np.int64))[None] for c in ("pt_100", "pt_1")])
    logits = torch.randn(2, 8, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    partial_batch = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 1]], dtype=torch.bool)
    compiled = losses.training_loss(1.0, 1.0, False, losses.COMPILE_MIN_STEPS)
    assert isinstance(compiled, losses._Compiled)
    eager = losses.training_loss(1.0, 1.0, False, losses.COMPILE_MIN_STEPS - 1)
    for contoured in (partial_batch, torch.ones(2, 8, dtype=torch.bool)):
        values, grads = [], []
        for fn in (eager, compiled):
            x = logits.clone().requires_grad_(True)
            value = fn(x, target, contoured)
            value.backward()
            values.append(value.detach())
            grads.append(x.grad)
        assert not compiled.failed  # it ran compiled
        assert torch.allclose(values[0], values[1], atol=1e-5) and torch.allclose(grads[0], grads[1], atol=1e-6)
    monkeypatch.setenv("MEDSEG_COMPILE", "0")
    assert not isinstance(losses.training_loss(1.0, 1.0, False, 10**6), losses._Compiled)

    def broken(*args):
        raise RuntimeError("no C++ compiler")

    fallback = losses._Compiled(1.0, 1.0, False)
    fallback.plain = fallback.marginal = broken
    assert torch.equal(fallback(logits, target, partial_batch), eager(logits, target, partial_batch))
    assert fallback.failed
