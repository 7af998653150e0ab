"""HyperPatch-Match in NumPy: the specification of the native kernel, and its fallback.

Mirrors ``compnn_index/search/csrc/hyperpatchmatch.cpp`` step by step (the algorithm is described
in :mod:`compnn_index.search.hyperpatchmatch`); similarities are computed in float64, so they may
differ from the kernel's float32 ones in the last bits.
"""
from __future__ import annotations

import numpy as np

from .field import NNField
from .hpm_common import PatchMatchStats, Problem


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_INIT_ITERATION = np.uint64(0xFFFFFFFFFFFFFFFF)
_JUMP_STREAM = 1 << 32


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _position_key(seed: int, iteration: np.uint64 | int, positions: np.ndarray) -> np.ndarray:
    s = _mix64(np.array([seed], dtype=np.uint64))
    s = _mix64(s ^ np.uint64(iteration))
    return _mix64(s ^ positions.astype(np.uint64))


def _draw(key: np.ndarray, stream: int) -> np.ndarray:
    return _mix64(key ^ np.uint64(stream))


def _below(r: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Integer in [0, n) from the high 32 bits of r (n < 2**31)."""
    n = np.asarray(n, dtype=np.uint64)
    return (((r >> np.uint64(32)) * n) >> np.uint64(32)).astype(np.int64)


def _uniform_around(r: np.ndarray, c: np.ndarray, radius: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Uniform integer in the window [c - radius, c + radius] clipped to [0, n - 1]."""
    lo = np.maximum(0, c - radius)
    hi = np.minimum(n - 1, c + radius)
    return lo + _below(r, hi - lo + 1)


class _Reference:
    """State and steps of the NumPy HyperPatch-Match (slot = index into ``images``)."""

    def __init__(self, p: Problem) -> None:
        self.p = p
        self.hq, self.wq, self.d = p.queries.shape
        self.q = p.queries.reshape(-1, self.d)
        self.h = p.layer.grids[p.images, 0]
        self.w = p.layer.grids[p.images, 1]
        self.radius = np.maximum(self.h, self.w)
        self.levels = np.array([int(r).bit_length() for r in self.radius], dtype=np.int64)
        n = self.hq * self.wq
        self.slot = np.zeros(n, dtype=np.int64)
        self.y = np.zeros(n, dtype=np.int64)
        self.x = np.zeros(n, dtype=np.int64)
        self.sim = np.zeros(n, dtype=np.float32)
        self.candidates = 0

    def similarity(self, pos: np.ndarray, slot: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        ids = self.p.layer.positions_to_ids(self.p.images[slot], y, x)
        a = self.q[pos].astype(np.float64)
        b = self.p.layer.decode(ids).astype(np.float64)
        self.candidates += int(pos.size)
        return np.einsum("ij,ij->i", a, b).astype(np.float32)

    def offer(self, pos: np.ndarray, slot: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
        """Evaluate candidates (skipping those equal to the current match); keep strict gains."""
        new = (slot != self.slot[pos]) | (y != self.y[pos]) | (x != self.x[pos])
        pos, slot, y, x = pos[new], slot[new], y[new], x[new]
        if pos.size == 0:
            return
        s = self.similarity(pos, slot, y, x)
        better = s > self.sim[pos]
        pos = pos[better]
        self.slot[pos], self.y[pos], self.x[pos], self.sim[pos] = slot[better], y[better], x[better], s[better]

    def initialise(self) -> None:
        p = self.p
        pos = np.arange(self.hq * self.wq)
        if p.init is None:
            key = _position_key(p.seed, _INIT_ITERATION, pos)
            self.slot = _below(_draw(key, 0), len(p.images))
            self.y = _below(_draw(key, 1), self.h[self.slot])
            self.x = _below(_draw(key, 2), self.w[self.slot])
        else:
            lookup = np.full(p.layer.num_images, -1, dtype=np.int64)
            lookup[p.images] = np.arange(len(p.images))
            self.slot = lookup[p.init.image.reshape(-1)]
            self.y = p.init.y.reshape(-1).astype(np.int64)
            self.x = p.init.x.reshape(-1).astype(np.int64)
        self.sim = self.similarity(pos, self.slot, self.y, self.x)

    def random_search(self, pos: np.ndarray, t: int) -> None:
        p = self.p
        slot, cy, cx = self.slot[pos].copy(), self.y[pos].copy(), self.x[pos].copy()
        key = _position_key(p.seed, t, pos)
        radius, levels, h, w = self.radius[slot], self.levels[slot], self.h[slot], self.w[slot]
        cand: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for i in range(p.samples):
            r = radius >> ((t * p.samples + i) % levels)
            cand.append((slot, _uniform_around(_draw(key, 2 * i), cy, r, h),
                         _uniform_around(_draw(key, 2 * i + 1), cx, r, w)))
        m = len(p.images)
        for j in range(p.jumps):
            stream = _JUMP_STREAM + 3 * j
            if m > 1:
                s = _below(_draw(key, stream), m - 1)
                s = s + (s >= slot)
            else:
                s = np.zeros_like(slot)
            cand.append((s, _below(_draw(key, stream + 1), self.h[s]), _below(_draw(key, stream + 2), self.w[s])))
        # All candidates are drawn around the match held before this step, then accepted in order.
        sims = []
        for s, y, x in cand:
            new = (s != slot) | (y != cy) | (x != cx)
            sim = np.full(pos.size, -np.inf, dtype=np.float32)
            if new.any():
                sim[new] = self.similarity(pos[new], s[new], y[new], x[new])
            sims.append(sim)
        for (s, y, x), sim in zip(cand, sims):
            better = sim > self.sim[pos]
            b = pos[better]
            self.slot[b], self.y[b], self.x[b], self.sim[b] = s[better], y[better], x[better], sim[better]

    def iterate(self, t: int) -> None:
        forward = t % 2 == 0
        step = 1 if forward else -1
        rows = np.arange(self.hq) * self.wq
        for i in range(self.wq):
            x = i if forward else self.wq - 1 - i
            pos = rows + x
            if i > 0:
                nb = pos - step
                s = self.slot[nb]
                self.offer(pos, s, self.y[nb], np.clip(self.x[nb] + step, 0, self.w[s] - 1))
            self.random_search(pos, t)
        cols = np.arange(self.wq)
        for i in range(1, self.hq):
            y = i if forward else self.hq - 1 - i
            pos = y * self.wq + cols
            nb = pos - step * self.wq
            s = self.slot[nb]
            self.offer(pos, s, np.clip(self.y[nb] + step, 0, self.h[s] - 1), self.x[nb])

    def field(self) -> NNField:
        shape = (self.hq, self.wq)
        return NNField(
            self.p.images[self.slot].reshape(shape),
            self.y.reshape(shape),
            self.x.reshape(shape),
            self.sim.reshape(shape),
        )


def run_reference(p: Problem, return_stats: bool) -> NNField | tuple[NNField, PatchMatchStats]:
    ref = _Reference(p)
    ref.initialise()
    means = [float(np.mean(ref.sim, dtype=np.float64))]
    run = 0
    for t in range(p.iterations):
        ref.iterate(t)
        means.append(float(np.mean(ref.sim, dtype=np.float64)))
        run += 1
        if means[-1] - means[-2] < p.tol:
            break
    result = ref.field()
    if not return_stats:
        return result
    return result, PatchMatchStats(run, means, ref.candidates, False)
