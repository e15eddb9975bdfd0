"""Training: patch sampling, augmentation, loop, checkpoints, and the run that ties them together."""

from medseg.train.run import train

__all__ = ["train"]
