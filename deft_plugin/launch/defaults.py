"""The data the demo and the study use when none is given."""

from __future__ import annotations

import os
from pathlib import Path

HH_RELATIVE = Path("shared") / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
HUB_DATASET = "Anthropic/hh-rlhf"


def default_data() -> str:
    """HH-RLHF harmless-base from a `shared/data` folder beside the project when there is one,
    else the hub dataset."""
    if os.environ.get("DEFT_HH_RLHF"):
        return os.environ["DEFT_HH_RLHF"]
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        for parent in (base, *base.parents):
            if (parent / HH_RELATIVE).is_file():
                return str(parent / HH_RELATIVE)
    return HUB_DATASET
