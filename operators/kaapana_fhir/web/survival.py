"""Kaplan–Meier estimates and the log-rank test (pure Python + math; no scipy, no lifelines).

Kept dependency-free because the Airflow webserver of Kaapana 0.6 imports it and that image cannot be extended
by a DAG image. Checked in the unit tests against published numbers (Freireich et al. 6-MP leukaemia trial as
tabulated by Kleinbaum & Klein, *Survival Analysis*: log-rank chi-square 16.79, KM of the 6-MP arm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KmCurve:
    """Step function: ``times[i]`` → ``survival[i]`` (starts at time 0, survival 1); ``at_risk[i]`` before
    ``times[i]``; ``n`` subjects, ``events`` observed events; ``median`` (None if never below 0.5)."""

    times: list[float]
    survival: list[float]
    at_risk: list[int]
    n: int
    events: int
    median: float | None


def _clean(times: Sequence[float], events: Sequence[bool | int]) -> list[tuple[float, int]]:
    if len(times) != len(events):
        raise ValueError(f"times ({len(times)}) and events ({len(events)}) differ in length")
    out = []
    for t, e in zip(times, events, strict=False):
        if t is None or (isinstance(t, float) and math.isnan(t)):
            continue
        if float(t) < 0:
            raise ValueError(f"negative survival time {t!r} (rule: time >= 0)")
        out.append((float(t), 1 if bool(e) else 0))
    return out


def kaplan_meier(times: Sequence[float], events: Sequence[bool | int]) -> KmCurve:
    """Product-limit estimate. Rows with a missing time are dropped (count them as missing upstream)."""
    data = sorted(_clean(times, events))
    n = len(data)
    ts, surv, risk = [0.0], [1.0], [n]
    s, at_risk, i = 1.0, n, 0
    median = None
    while i < len(data):
        t = data[i][0]
        d = c = 0
        while i < len(data) and data[i][0] == t:
            d += data[i][1]
            c += 1 - data[i][1]
            i += 1
        if d:
            s *= 1.0 - d / at_risk
            ts.append(t)
            surv.append(s)
            risk.append(at_risk)
            if median is None and s <= 0.5:
                median = t
        at_risk -= d + c
    if data and ts[-1] < data[-1][0]:  # draw the curve to the last (censored) follow-up
        ts.append(data[-1][0])
        surv.append(s)
        risk.append(max(at_risk, 0))
    return KmCurve(ts, surv, risk, n, sum(e for _, e in data), median)


def _gammq(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) (series for x < a+1, else Lentz continued fraction)."""
    if x <= 0:
        return 1.0
    gln = math.lgamma(a)
    if x < a + 1.0:
        ap, total, delta = a, 1.0 / a, 1.0 / a
        for _ in range(10_000):
            ap += 1.0
            delta *= x / ap
            total += delta
            if abs(delta) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - gln))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - gln) * h


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for a chi-square variable with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("df must be >= 1")
    return _gammq(df / 2.0, x / 2.0)


@dataclass(frozen=True)
class LogRank:
    statistic: float
    df: int
    p_value: float
    observed: list[float]
    expected: list[float]


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the k-1 x k-1 log-rank system)."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-12:
            raise ZeroDivisionError("singular log-rank variance matrix")
        m[col], m[piv] = m[piv], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                for k in range(col, n + 1):
                    m[r][k] -= f * m[col][k]
    return [m[i][n] / m[i][i] for i in range(n)]


def logrank(groups: Sequence[tuple[Sequence[float], Sequence[bool | int]]]) -> LogRank | None:
    """k-sample log-rank test (chi-square, k-1 df). None when fewer than two groups have subjects or no
    event was observed."""
    data = [_clean(t, e) for t, e in groups]
    data = [g for g in data if g]
    k = len(data)
    if k < 2:
        return None
    event_times = sorted({t for g in data for t, e in g if e})
    if not event_times:
        return None
    obs = [0.0] * k
    exp = [0.0] * k
    var = [[0.0] * k for _ in range(k)]
    for t in event_times:
        n = [sum(1 for ti, _ in g if ti >= t) for g in data]
        d = [sum(1 for ti, e in g if ti == t and e) for g in data]
        big_n, big_d = sum(n), sum(d)
        if big_n < 1:
            continue
        for j in range(k):
            obs[j] += d[j]
            exp[j] += n[j] * big_d / big_n
        if big_n > 1:
            f = big_d * (big_n - big_d) / (big_n - 1) / big_n
            for j in range(k):
                for m in range(k):
                    var[j][m] += f * n[j] * ((1.0 if j == m else 0.0) - n[m] / big_n)
    diff = [obs[j] - exp[j] for j in range(k - 1)]
    sub = [row[:k - 1] for row in var[:k - 1]]
    try:
        sol = _solve(sub, diff)
    except ZeroDivisionError:
        return None
    stat = sum(diff[j] * sol[j] for j in range(k - 1))
    return LogRank(stat, k - 1, chi2_sf(stat, k - 1), obs, exp)
