"""Paired comparisons of two sweep variants over seeds, shared by paper_claims.py and evidence.py.

Runs of the same seed share their data order and initialisation, so two variants are compared
seed by seed: the mean of the per-seed differences, its standard error, and a two-sided t-test
at 95% with ``n - 1`` degrees of freedom (with 3 seeds a difference must be about 4.3 standard
errors to count).
"""

from __future__ import annotations

import math
import statistics

# Two-sided 95% critical values of Student's t by degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def paired(default: dict, other: dict, metric: str = "rsum") -> dict:
    """Paired difference ``default - other`` over the seeds both finished.

    Args:
        default, other: sweep rows with ``seeds`` and ``<metric>_values`` (one value per seed).

    Returns:
        ``{"n", "diff_mean", "diff_se", "t"}`` (``t`` and ``diff_se`` None below two seeds).
    """
    a = dict(zip(default["seeds"], default[f"{metric}_values"], strict=True))
    b = dict(zip(other["seeds"], other[f"{metric}_values"], strict=True))
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    out = {"n": len(diffs), "diff_mean": statistics.fmean(diffs) if diffs else None, "diff_se": None, "t": None}
    if len(diffs) >= 2:
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        out["diff_se"] = se
        if se > 0:
            out["t"] = out["diff_mean"] / se
        else:  # every seed gave the same difference: none at all, or an exact shift
            out["t"] = 0.0 if out["diff_mean"] == 0 else math.copysign(math.inf, out["diff_mean"])
    return out


def significance(test: dict) -> str:
    """What a :func:`paired` test says, before any sign is read.

    Returns:
        ``not enough seeds`` (fewer than two paired seeds), ``identical runs`` (every seed gave
        exactly the same result), ``cannot tell`` (not significant at 95%) or ``significant``.
    """
    if test["t"] is None:
        return "not enough seeds"
    if test["diff_se"] == 0 and test["diff_mean"] == 0:
        return "identical runs"
    if abs(test["t"]) < T95.get(test["n"] - 1, 1.96):
        return "cannot tell"
    return "significant"
