"""Lesion-wise detection: each connected component of the truth is a lesion to find.

A truth lesion is detected (true positive) when a predicted component overlaps it by at least
``min_overlap`` of the lesion's voxels (default: any voxel). A predicted component that overlaps no
truth lesion is a false positive. Sensitivity = TP / lesions; precision = predicted components
touching a lesion / predicted components; F1 from the two. Conventions: no lesions and no
predictions -> sensitivity = precision = F1 = 1; no lesions but predictions -> sensitivity 1,
precision 0; lesions but no predictions -> 0, 1 (and F1 0).
"""

from __future__ import annotations

import numpy as np

from medseg.postprocess.components import components


def lesion_detection(pred: np.ndarray, truth: np.ndarray, min_overlap: float = 0.0) -> dict[str, float]:
    """Counts (``lesions``, ``detected``, ``predicted``, ``false_positives``) and rates for two masks."""
    truth_cc, truth_sizes = components(truth.astype(bool))
    pred_cc, _ = components(pred.astype(bool))
    n_truth, n_pred = int(truth_cc.max()), int(pred_cc.max())
    both = (truth_cc > 0) & (pred_cc > 0)
    pairs = np.unique(np.stack([truth_cc[both], pred_cc[both]]), axis=1) if both.any() else np.zeros((2, 0), int)
    overlap = np.bincount(truth_cc[both], minlength=n_truth + 1)
    fraction = overlap[1:] / np.maximum(truth_sizes[1:], 1)
    detected = int((fraction > min_overlap).sum()) if min_overlap > 0 else int((overlap[1:] > 0).sum())
    hit_preds = len(set(pairs[1].tolist()))
    sensitivity = 1.0 if n_truth == 0 else detected / n_truth
    precision = 1.0 if n_pred == 0 else hit_preds / n_pred
    if n_truth == 0 and n_pred > 0:
        precision = 0.0
    f1 = 0.0 if sensitivity + precision == 0 else 2 * sensitivity * precision / (sensitivity + precision)
    if n_truth > 0 and n_pred == 0:
        f1 = 0.0
    return {"lesions": n_truth, "detected": detected, "predicted": n_pred, "false_positives": n_pred - hit_preds,
            "sensitivity": sensitivity, "precision": precision, "f1": f1}
