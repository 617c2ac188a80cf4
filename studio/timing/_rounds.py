"""Alternating timed rounds, the engine under studio/timing/latency.py: `side_by_side` times several callables
against each other (warm-ups, blocks per round, the stopping rules), `settle` waits for idle threads
between blocks. Nothing here knows about models or runtimes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from studio.timing._confidence import ci_pct

WARMUP = 3  # untimed calls first (fewer when one call already takes the whole budget)
MIN_WARMUP = 1
MIN_ITERS = 6  # the fewest calls whose median has a distribution-free 95% confidence interval
MIN_CALLS = 3  # ... unless calls are so slow that 6 would overrun the budget: then as many as fit, at least 3
MAX_ITERS = 2000
ROUNDS = 6  # CPU timings: at most this many alternating rounds of PyTorch and every ONNX file (side_by_side)
MIN_ROUNDS = 2  # ... and at least this many, so a drift of the machine's speed still hits every runtime
SLOW_CALL_MS = 50.0  # later rounds start with an untimed call only for calls faster than this (see side_by_side)
PRECISION = 0.03  # measure_all stops once every median is known within +-3% (95% CI), budget or not
# Before each block of another callable, wait (at most this long) until this process's threads stop using
# the CPU. ONNX Runtime's thread pool spins ~50 ms after a run (measured: 50 ms of CPU in the 50 ms after
# the last call, then none); a runtime timed meanwhile shares the cores with it: the demo's PyTorch call,
# 2.5 ms alone, took 7.1 ms right after ORT calls, which no user running one runtime ever sees.
SETTLE_MAX_S = 0.2
SETTLE_POLL_S = 0.005


def _warm_up(fn: Callable[[], object], calls: int, budget_s: float) -> int:
    """Up to `calls` untimed calls (at least MIN_WARMUP); stop early once they took `budget_s`."""
    warm, start = 0, time.perf_counter()
    while warm < calls:
        fn()
        warm += 1
        if warm >= MIN_WARMUP and time.perf_counter() - start >= budget_s:
            break  # a slow call: the budget is better spent on timed iterations
    return warm


@dataclass
class Stats:
    """One callable's timed calls: percentiles (ms), counts, the median's 95% CI and why timing stopped."""

    p50: float
    p90: float
    p99: float
    iterations: int
    untimed: int
    ci95_pct: float | None  # half-width of the median's 95% confidence interval, % of the median
    stopped: str  # "precision" (CI within the target), "budget" (time spent) or "max_iters"


def side_by_side(
    fns: dict[Any, Callable[[], object]],
    budget_s: float,
    rounds: int = ROUNDS,
    warmup: int = WARMUP,
    min_iters: int = MIN_ITERS,
    max_iters: int = MAX_ITERS,
    on_round: Callable[[int, int], None] | None = None,
    per_round: dict[Any, list[list[float]]] | None = None,
    precision: float | None = None,
    min_rounds: int = MIN_ROUNDS,
    warm: frozenset = frozenset(),
    seeded: dict[Any, float] | None = None,
) -> dict[Any, Stats | BaseException]:
    """Time several callables against each other, in up to `rounds` alternating rounds.

    In each round every callable in turn gets a block of budget_s / rounds seconds of wall time: the wait
    for idle threads (`settle`), its untimed calls and its timed calls all count (at least
    ceil(min_iters / rounds) timed calls, at most max_iters / rounds), so `budget_s` is what a callable
    costs, not only what it reports (a fast model's warm-ups and waits once added ~45% to its budget: MiniLM,
    measured). A block starts with untimed calls: the
    warm-up in the first round, one call in later rounds (the callable before it may have left threads
    spinning and caches cold) unless its calls take SLOW_CALL_MS or more: there a cold start is a small
    part of one call, and an untimed call would cost as much as a timed one. A slow drift of the machine's speed then hits every callable alike, so
    their ratios hold. With `precision` (e.g. 0.03), timing stops after a round (at least `min_rounds`)
    once every callable has `min_iters` calls and its median's 95% CI within +-precision: a stable
    runtime does not spend the whole budget. Returns key -> Stats, or the exception that stopped that
    callable (the others go on). `on_round(done, rounds)` after each round (done == rounds at the end,
    also when it stopped early). per_round: a dict to fill with key -> one list of timed calls (ms) per
    round it completed. `warm`: keys whose callable has already run these very inputs (the same session
    and arrays, e.g. parity's): their first call is timed, and kept when it took SLOW_CALL_MS or more (the
    rule of the later rounds: its one-time costs are paid, and a cold cache is a small part of a slow call);
    a faster first call is discarded as a warm-up and the usual warm-up follows. `seeded`: key -> the ms of
    a call already made on these very inputs and timed the same way (parity's ORT call, on the session timed
    here): when it took SLOW_CALL_MS or more it is the key's first timed call, and its time is spent from
    round 0's block as if the block had made it (so a slow runtime needs one call less); a faster one only
    makes the key warm."""
    block = budget_s / rounds
    per_block, cap = -(-min_iters // rounds), max(1, max_iters // rounds)
    samples: dict[Any, list[float]] = {k: [] for k in fns}
    untimed = dict.fromkeys(fns, 0)
    failed: dict[Any, BaseException] = {}
    stopped, planned = "budget", rounds
    seeds = {k: ms for k, ms in (seeded or {}).items() if k in fns and ms >= SLOW_CALL_MS}
    warm = warm | frozenset(k for k in (seeded or {}) if k in fns)
    for r in range(rounds):
        for key, fn in fns.items():
            if key not in failed:
                deadline = time.perf_counter() + block  # the block's wall time: its wait and untimed calls count
                if r == 0 and key in seeds:
                    samples[key].append(seeds[key])
                    deadline -= seeds[key] / 1000.0
                if len(fns) > 1:
                    settle()
                try:
                    if r == 0 and key in warm and not samples[key]:
                        untimed[key] += _warm_start(fn, samples[key])
                    untimed[key] += _block(fn, samples[key], r, warmup, deadline, per_block, cap, per_round, key)
                except Exception as e:
                    failed[key] = e
        if r == 0:
            planned = _rounds_in_budget(samples, failed, rounds, budget_s)
        precise = precision is not None and min_rounds <= r + 1 < rounds
        if precise and precision is not None and _precise(samples, failed, min_iters, precision):
            stopped = "precision"
        if stopped == "precision" or r + 1 >= planned:
            if on_round is not None:
                on_round(rounds, rounds)
            break
        if on_round is not None:
            on_round(r + 1, rounds)
    out: dict[Any, Any] = dict(failed)
    for key, times in samples.items():
        if key not in failed:
            p50, p90, p99 = np.percentile(times, [50, 90, 99])
            why = stopped if stopped == "precision" or len(times) < cap * rounds else "max_iters"
            out[key] = Stats(float(p50), float(p90), float(p99), len(times), untimed[key], ci_pct(times), why)
    return out


def settle(max_s: float = SETTLE_MAX_S) -> float:
    """Wait until this process's threads are idle (under a fifth of one core over SETTLE_POLL_S), at most
    `max_s`; returns the seconds waited."""
    start = time.monotonic()  # not perf_counter: tests replace that with a clock only the callables move
    last = time.process_time()
    while time.monotonic() - start < max_s:
        time.sleep(SETTLE_POLL_S)
        now = time.process_time()
        if now - last < SETTLE_POLL_S / 5:
            break
        last = now
    return time.monotonic() - start


def _warm_start(fn, times: list[float]) -> int:
    """The first call of a callable that already ran these inputs: kept in `times` when slow (returns 0),
    else discarded (returns 1, an untimed call)."""
    t0 = time.perf_counter()
    fn()
    ms = (time.perf_counter() - t0) * 1000.0
    if ms >= SLOW_CALL_MS:
        times.append(ms)
        return 0
    return 1


def _block(
    fn, times: list[float], r: int, warmup: int, deadline: float, per_block: int, cap: int, per_round, key
) -> int:
    """One callable's block of round r, until `deadline` (perf_counter): its untimed calls (returned), then
    timed calls appended to `times` (at least per_block of them, at most cap)."""
    if r == 0 and not times:
        warm = _warm_up(fn, warmup, max(0.0, deadline - time.perf_counter()))
    elif r == 0:  # a slow first call already timed (_warm_start): it is this block's first call
        warm = 0
    elif float(np.median(times)) < SLOW_CALL_MS:  # a slow call shrugs off a cold start
        warm = _warm_up(fn, 1, 0)
    else:
        warm = 0
    n = len(times) if r == 0 else 0  # a warm start's timed call counts in round 0's block
    while n < cap and (n < per_block or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
        n += 1
    if per_round is not None:
        per_round.setdefault(key, []).append(times[len(times) - n :])
    return warm


def _rounds_in_budget(samples: dict[Any, list[float]], failed: dict, rounds: int, budget_s: float) -> int:
    """How many rounds the budget allows once the first round showed each call's cost: all of them, unless
    the slowest callable's one call per round would overrun `budget_s`; then as many as fit, but at least
    MIN_CALLS (a median of fewer calls says little; below 6 there is no 95% CI, and the table shows none)."""
    costs = [float(np.median(t)) / 1000.0 for k, t in samples.items() if t and k not in failed]
    if rounds <= MIN_CALLS or not costs or max(costs) * rounds <= budget_s:
        return rounds
    return max(MIN_CALLS, min(rounds, math.ceil(budget_s / max(costs))))


def _precise(samples: dict[Any, list[float]], failed: dict, min_iters: int, precision: float) -> bool:
    """Every callable still timed has min_iters calls and its median's 95% CI within +-precision."""
    for key, times in samples.items():
        if key in failed:
            continue
        pct = ci_pct(times) if len(times) >= min_iters else None
        if pct is None or pct > 100.0 * precision:
            return False
    return True
