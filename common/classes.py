"""Which of a site's class folders is which of the run's classes: by name, never by count or position.

The coordinator fixes the run's class names, in label order; each client matches its own by name.
Same names in another order are mapped onto the run's order; different names are refused with the
difference spelled out, since training on scrambled labels would be a silent wrong answer.
"""

from __future__ import annotations

import numpy as np

from fedtl.common.errors import DataUnavailable


def label_map(local: list[str], run: tuple[str, ...], where: str) -> np.ndarray | None:
    """`mapping[local_label] = run_label`, or None when the local classes already are the run's, in order."""
    if list(local) == list(run):
        return None
    missing, unexpected = [c for c in run if c not in local], [c for c in local if c not in run]
    if missing or unexpected or len(set(local)) != len(local):
        raise DataUnavailable(
            f"{where} has classes that are not the federation's: missing {missing[:10]}, unexpected {unexpected[:10]} "
            f"(the run trains {len(run)} classes: {', '.join(run[:10])}{', ...' if len(run) > 10 else ''}). "
            "Rename the class folders to the federation's names; training on mismatched labels would corrupt the shared model"
        )
    order = {name: index for index, name in enumerate(run)}
    return np.asarray([order[name] for name in local], dtype=np.int64)
