"""Write the manifests of the shared datasets with a fixed test split that no training, validation or tuning sees.

    python data_manifests/make_manifests.py [--data ../shared/data]

About 20 % of each dataset's subjects (seeded, so the split never changes) get ``split: test``; the other cases
keep ``fold: index mod 5`` over all cases in file order (for hippocampus the folds it always had). LIDC is split
by patient (every nodule of a patient on one side); OpenKBP cases carry their contoured labels. ``medseg train``
never trains, validates or plans on test cases; ``medseg infer RUN MANIFEST OUT`` segments only them and
``medseg evaluate OUT MANIFEST`` scores only them. Paths are relative to this folder, for a checkout beside
``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SEED = 20261203
TEST_SHARE = 0.2
_DATASETS = {  # name -> (folder, channel, subject of a case id)
    "hippocampus": ("hippocampus", "MR", lambda case: case),
    "openkbp": ("openkbp", "CT", lambda case: case),
    "lidc": ("lidc_nodules", "CT", lambda case: re.sub(r"_R_\d+$", "", case)),
}


def manifest(data: Path, name: str) -> dict:
    folder, channel, subject_of = _DATASETS[name]
    root = data / folder
    description = json.loads((root / "dataset.json").read_text())
    ids = sorted(Path(e["label"]).name.removesuffix(".nii.gz") for e in description["training"])
    annotated_file = root / "annotated_labels.json"
    annotated = json.loads(annotated_file.read_text()) if annotated_file.exists() else {}
    subjects = sorted({subject_of(i) for i in ids})
    test = set(random.Random(SEED).sample(subjects, round(TEST_SHARE * len(subjects))))
    rel = Path("..") / ".." / "shared" / "data" / folder
    cases = []
    for index, case in enumerate(ids):
        entry = {"id": case, "images": [str(rel / "imagesTr" / f"{case}.nii.gz")],
                 "label": str(rel / "labelsTr" / f"{case}.nii.gz")}
        entry.update({"split": "test"} if subject_of(case) in test else {"fold": index % 5})
        if case in annotated:
            entry["annotated"] = sorted(annotated[case])
        cases.append(entry)
    return {"name": description["name"],
            "description": f"{description['name']} from ../shared/data/{folder}; {len(test)} of {len(subjects)} "
                           f"subjects (seed {SEED}) are the test split: never trained, validated or tuned on",
            "channels": {0: channel}, "labels": {int(k): v for k, v in description["labels"].items()},
            "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    args = parser.parse_args()
    for name in _DATASETS:
        data = manifest(args.data, name)
        header = f"# Written by make_manifests.py (seed {SEED}); do not edit by hand.\n"
        (HERE / f"{name}.yaml").write_text(header + yaml.safe_dump(data, sort_keys=False))
        test = sum(c.get("split") == "test" for c in data["cases"])
        print(f"{name}: {len(data['cases'])} cases, {test} in the test split")


if __name__ == "__main__":
    main()
