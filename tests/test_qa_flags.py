"""The border-contact flag knows what the training labels did: nodule crops touch their border most of the
time, so a nodule that does is not flagged; an organ in a whole scan is."""

from dataclasses import replace

import nibabel as nib
import numpy as np

from medseg.data import load_dataset
from medseg.preprocess import fingerprint
from medseg.qa.flags import case_flags


def _subset(dataset, n):
    return replace(dataset, cases=dataset.labelled[:n])


def test_border_contact_is_judged_against_the_training_labels(data_path):
    lidc = fingerprint(_subset(load_dataset(data_path("lidc_nodules")), 12))
    hippo = fingerprint(_subset(load_dataset(data_path("hippocampus")), 12))
    assert lidc["label_border_fraction"]["1"] >= 0.5 > hippo["label_border_fraction"]["1"]
    truth = np.asarray(nib.load(data_path("lidc_nodules/labelsTr/LIDC-IDRI-0001_R_1.nii.gz")).dataobj)
    touching = np.zeros_like(truth)
    touching[0, :3, :3] = 1  # a nodule on the grid's first face
    labels = {1: "nodule"}
    assert case_flags(touching, (1, 1, 1), labels) == ["nodule touches the scan border (structure may be cut off)"]
    assert case_flags(touching, (1, 1, 1), labels, training_border=lidc["label_border_fraction"]) == []
    assert case_flags(touching, (1, 1, 1), labels, training_border=hippo["label_border_fraction"]) != []
