"""How sure an accuracy change is: a paired comparison of two models on the same images.

Dense and compressed inference run on the same images, so their accuracies are paired: only the
images whose prediction changed carry information about the change. Of the d images on which
exactly one side is right, `won` are right only compressed and `lost` right only dense; the change
in correct images is won - lost. Given d, under "no change" won is Binomial(d, 1/2): the exact
McNemar test. Its 95% interval for pi = P(won | changed) is Clopper and Pearson's (Biometrika
26:404, 1934), exact at any count, the 1-4 changed images of a small task included; the change in
accuracy, (d / n) x (2 pi - 1), inherits it. The interval leaves out 0 exactly when the two-sided
exact test (twice the smaller tail) rejects "no change" at 5%. It is conditional on d: with no
changed prediction it is the single point 0.
"""

from __future__ import annotations

import functools
import math

import numpy as np

LEVEL = 0.95


@functools.lru_cache(maxsize=8)
def _log_factorials(n: int) -> np.ndarray:
    """log(i!) for i = 0..n."""
    return np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n up to millions stays finite)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lf = _log_factorials(n)
    i = np.arange(k + 1)
    logs = lf[n] - lf[i] - lf[n - i] + i * math.log(p) + (n - i) * math.log1p(-p)
    top = logs.max()
    return min(1.0, math.exp(top) * float(np.exp(logs - top).sum()))


def _solve(f, target: float) -> float:
    """The p in [0, 1] where the decreasing function f(p) crosses target, by bisection to 1e-12."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(x: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact (central) interval for a binomial proportion after x successes in n trials: the lower
    end solves P(X >= x) = (1 - level) / 2, the upper P(X <= x) = (1 - level) / 2; (0, 1) for n = 0."""
    if not 0 <= x <= n:
        raise ValueError(f"clopper_pearson expects 0 <= x <= n, got x={x}, n={n}")
    if n == 0:
        return 0.0, 1.0
    a = (1 - level) / 2
    lo = 0.0 if x == 0 else 1.0 - _solve(lambda q: binomial_cdf(n - x, n, q), a)
    hi = 1.0 if x == n else _solve(lambda p: binomial_cdf(x, n, p), a)
    return lo, hi


def mcnemar_p(won: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: twice the smaller binomial tail of won out of won + lost at 1/2."""
    d = won + lost
    if d == 0:
        return 1.0
    tail = binomial_cdf(min(won, lost), d, 0.5)
    return min(1.0, 2.0 * tail)


def paired_change(base_correct, new_correct, level: float = LEVEL) -> dict:
    """The change in accuracy from `base_correct` to `new_correct` (bool arrays, one entry per image).

    Returns n_images, won, lost, change_images (won - lost), change (a fraction of n_images),
    ci (the interval of the change, fractions) and p_value (exact McNemar), see the module's note.
    """
    base = np.asarray(base_correct, bool)
    new = np.asarray(new_correct, bool)
    if base.shape != new.shape or base.ndim != 1:
        raise ValueError(f"paired_change expects two equal 1-D arrays, got {base.shape} and {new.shape}")
    n = int(base.size)
    won = int(np.count_nonzero(new & ~base))
    lost = int(np.count_nonzero(base & ~new))
    d = won + lost
    if n == 0:
        return {"n_images": 0, "won": 0, "lost": 0, "change_images": 0, "change": 0.0, "ci": [0.0, 0.0], "p_value": 1.0}
    lo, hi = clopper_pearson(won, d, level) if d else (0.5, 0.5)
    return {
        "n_images": n,
        "won": won,
        "lost": lost,
        "change_images": won - lost,
        "change": (won - lost) / n,
        "ci": [d / n * (2 * lo - 1), d / n * (2 * hi - 1)],
        "p_value": mcnemar_p(won, lost),
    }
