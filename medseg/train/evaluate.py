"""Final validation of a trained network on its held-out fold, on each case's original grid."""

from __future__ import annotations

import numpy as np

from medseg.data.dataset import Dataset
from medseg.infer.sliding import predict_probabilities
from medseg.metrics.overlap import dice_per_class
from medseg.preprocess import preprocess, restore_labels
from medseg.preprocess.io import load_case


def evaluate_fold(net, dataset: Dataset, ids, plan: dict, device, dtype, mirror: bool = True) -> dict:
    """Dice per class per case, after undoing preprocessing (what `medseg infer` would output).

    Returns:
        ``{"per_class": {name: mean Dice}, "mean": float, "cases": {id: {name: Dice}}, "mirror": bool}``.
    """
    labels = {int(k): v for k, v in plan["labels"].items()}
    classes = sorted(k for k in labels if k != 0)
    by_id = {c.id: c for c in dataset.cases}
    cases = {}
    for case_id in ids:
        image, label = load_case(by_id[case_id])
        data, _, trace = preprocess(image, None, plan)
        probs = predict_probabilities(net, data, plan["patch_size"], device, dtype, mirror=mirror)
        pred = restore_labels(probs, trace, sorted(labels))
        cases[case_id] = {labels[k]: d for k, d in dice_per_class(pred, label.array, classes).items()}
    per_class = {labels[k]: float(np.mean([c[labels[k]] for c in cases.values()])) for k in classes}
    return {"per_class": per_class, "mean": float(np.mean(list(per_class.values()))), "cases": cases,
            "mirror": mirror}
