"""The one split of a preference data set into test, validation and the training pool.

Whatever trains (the demo, the study's arms, the sweeps and benchmarks that train) draws its rows
from the pool alone and makes its choices on validation; test is read only by a study's final
measurement. The split is a seeded shuffle, test taken first, then validation, then the pool: a
larger pool never moves a test or validation row."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

PARTS = ("test", "validation", "pool")


@dataclass(frozen=True)
class Split:
    test: int = 500  # pairs for the final measurement only: nothing trains or chooses on them
    validation: int = 200  # pairs for choices (recipe, form, lambda) and the demo's held-out accuracy
    pool: int | None = None  # the pairs training may draw from; None: every row not in test or validation
    seed: int = 20261207  # drawn once for the second edition of the study (the first used 0)

    def indices(self, rows: int) -> dict[str, list[int]]:
        """Row indices of each part of `rows` rows."""
        pool = rows - self.test - self.validation if self.pool is None else self.pool
        if min(self.test, self.validation, pool) < 0 or self.test + self.validation + pool > rows:
            raise ValueError(f"split: test {self.test} + validation {self.validation} + pool "
                             f"{'the rest' if self.pool is None else self.pool} do not fit the {rows} rows of the data")
        order = list(range(rows))
        random.Random(self.seed).shuffle(order)
        bounds = {"test": (0, self.test), "validation": (self.test, self.test + self.validation),
                  "pool": (self.test + self.validation, self.test + self.validation + pool)}
        return {part: order[start:end] for part, (start, end) in bounds.items()}

    def parts(self, rows: Sequence) -> dict[str, list]:
        """The rows of each part."""
        return {part: [rows[i] for i in indices] for part, indices in self.indices(len(rows)).items()}


DATA_SPLIT = Split()  # the project's split: the demo, the sweeps, the benchmarks and the second study use it
