"""Exact cooperative-game tools with modalities as players.

A (transferable-utility) game on a finite player set ``N`` with ``M = |N|`` assigns a
value ``v(S)`` to every coalition ``S ⊆ N``. Here players are modality names and
``v(S)`` is typically a score (accuracy, information, ...) obtained from the
modalities in ``S`` alone. All functions are exact and enumerate the ``2^M``
coalitions, so they are limited to ``M <= MAX_PLAYERS``.

Internally a game is a flat table indexed by bit masks (bit ``i`` set ⇔ player ``i``
in the coalition); viewing it as shape ``(2^(M-1-i), 2, 2^i)`` puts the membership
of player ``i`` on the middle axis, which vectorises every per-player operation.

References
----------
L. S. Shapley (1953). A value for n-person games. In *Contributions to the Theory of
Games II*, Annals of Mathematics Studies 28, 307–317.

J. C. Harsanyi (1963). A simplified bargaining model for the n-person cooperative
game. *International Economic Review* 4(2), 194–220.

M. Grabisch (1997). k-order additive discrete fuzzy measures and their
representation. *Fuzzy Sets and Systems* 92(2), 167–189.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from math import comb

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MAX_PLAYERS",
    "antithetic_orders",
    "coalition_values",
    "inverse_mobius",
    "mobius_transform",
    "order_shapley",
    "prefix_masks",
    "shapley_table",
    "shapley_values",
]

MAX_PLAYERS = 20
"""Largest number of players accepted (exact methods cost ``2^M``)."""

Coalition = frozenset[str]


def coalition_values(
    value_fn: Callable[[Coalition], float], players: Sequence[str]
) -> dict[Coalition, float]:
    """Evaluate ``value_fn`` once on each of the ``2^M`` coalitions of ``players``.

    Coalitions are enumerated from the empty set upwards in bit-mask order
    (player ``i`` ↔ bit ``i``); the returned dict keeps that order.
    """
    players = _check_players(players)
    return {s: float(value_fn(s)) for s in _all_coalitions(players)}


def shapley_values(values: Mapping[Coalition, float], players: Sequence[str]) -> dict[str, float]:
    """Exact Shapley values (Shapley 1953).

    ``φ_i = Σ_{S ⊆ N∖{i}} |S|! (M − |S| − 1)! / M! · (v(S ∪ {i}) − v(S))``.

    They satisfy efficiency (``Σ_i φ_i = v(N) − v(∅)``), symmetry, the dummy
    property and linearity, and equal ``Σ_{T ∋ i} m(T) / |T|`` in terms of the
    Harsanyi dividends ``m`` of :func:`mobius_transform`.
    """
    players = _check_players(players)
    table = _to_table(values, players)
    m = len(players)
    # weight[s] = s! (M - s - 1)! / M! = 1 / (M · C(M-1, s)) for a coalition of size s
    weight = np.array([1.0 / (m * comb(m - 1, s)) for s in range(m)])
    sizes = _coalition_sizes(m)
    result = {}
    for i, player in enumerate(players):
        v = _split(table, i)  # v[:, 0] = v(S), v[:, 1] = v(S ∪ {i})
        w = weight[_split(sizes, i)[:, 0]]
        result[player] = float(np.sum(w * (v[:, 1] - v[:, 0])))
    return result


def shapley_table(table: NDArray, m: int) -> NDArray[np.float64]:
    """Exact Shapley values of many games at once (Shapley 1953).

    ``table`` has shape ``(2^m, *rest)``: entry ``[S, j]`` is ``v_j(S)`` with coalitions in
    bit-mask order (bit ``i`` ⇔ player ``i``). Returns ``(m, *rest)`` with
    ``φ_i[j] = Σ_{S ⊆ N∖{i}} |S|! (m − |S| − 1)! / m! · (v_j(S ∪ {i}) − v_j(S))`` — the formula
    of :func:`shapley_values`, vectorised over the games ``j`` (e.g. one game per held-out
    sample, whose mean game's Shapley values are the means, by linearity).
    """
    table = np.asarray(table, dtype=np.float64)
    if m < 1 or m > MAX_PLAYERS or table.shape[0] != 2**m:
        raise ValueError(f"shapley_table: expected 2^{m} rows for {m} players, got {table.shape}")
    rest = table.shape[1:]
    weight = np.array([1.0 / (m * comb(m - 1, s)) for s in range(m)])
    sizes = _coalition_sizes(m)
    out = np.empty((m, *rest))
    for i in range(m):
        v = table.reshape(-1, 2, 2**i, *rest)
        w = weight[_split(sizes, i)[:, 0]].reshape(-1, 2**i, *([1] * len(rest)))
        out[i] = np.sum(w * (v[:, 1] - v[:, 0]), axis=(0, 1))
    return out


def antithetic_orders(m: int, pairs: int, seed: int = 0) -> NDArray[np.int64]:
    """``2·pairs`` orders of the players ``0 .. m−1``: seeded uniform random orders, each
    followed by its reverse (antithetic sampling: a player early in one order is late in the
    other, which lowers the variance of :func:`order_shapley`)."""
    if pairs < 1 or m < 1:
        raise ValueError(f"antithetic_orders needs m >= 1 and pairs >= 1, got {m}, {pairs}")
    rng = np.random.default_rng(seed)
    forward = np.stack([rng.permutation(m) for _ in range(pairs)])
    return np.stack([forward, forward[:, ::-1]], axis=1).reshape(2 * pairs, m)


def prefix_masks(orders: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Membership ``(O, m+1, m)`` of the coalitions along each order: row ``j`` of order ``o``
    holds its first ``j`` players."""
    o, m = orders.shape
    rank = np.empty_like(orders)
    rank[np.arange(o)[:, None], orders] = np.arange(m)
    return rank[:, None, :] < np.arange(m + 1)[None, :, None]


def order_shapley(
    prefix_values: NDArray, orders: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Shapley values estimated from orders (Shapley 1953; the permutation-sampling estimator
    of Castro, Gómez & Tejada 2009).

    ``prefix_values[o, j]`` is ``v(first j players of orders[o])`` (shape ``(O, m+1, *rest)``,
    e.g. from :func:`prefix_masks`). Since ``φ_i = E_π[v(P_i^π ∪ {i}) − v(P_i^π)]`` for a
    uniformly random order π, the mean marginal contribution over the orders is unbiased when
    they are uniform (:func:`antithetic_orders`: pairs of an order and its reverse).

    Returns the estimate ``(m, *rest)`` and the per-pair estimates of the mean game
    ``(O/2, m)`` (orders ``2k`` and ``2k+1`` averaged, then averaged over the trailing axes
    ``rest``, e.g. samples); their standard deviation / sqrt(O/2) is the Monte-Carlo error.
    """
    values = np.asarray(prefix_values, dtype=np.float64)
    o, m = orders.shape
    if values.shape[:2] != (o, m + 1) or o % 2:
        raise ValueError(f"order_shapley: {values.shape} values for {orders.shape} orders")
    steps = values[:, 1:] - values[:, :-1]  # marginal contribution of orders[o, j]
    marginal = np.empty_like(steps)
    marginal[np.arange(o)[:, None], orders] = steps
    per_order = marginal.reshape(o, m, -1).mean(axis=2)
    per_pair = per_order.reshape(o // 2, 2, m).mean(axis=1)
    return marginal.mean(axis=0), per_pair


def mobius_transform(
    values: Mapping[Coalition, float], players: Sequence[str]
) -> dict[Coalition, float]:
    """Möbius transform, i.e. Harsanyi dividends (Harsanyi 1963; Grabisch 1997).

    ``m(S) = Σ_{T ⊆ S} (−1)^{|S|−|T|} v(T)``, so that ``v(S) = Σ_{T ⊆ S} m(T)``.
    ``m(S)`` is the pure interaction of the players in ``S`` not explained by any
    smaller coalition; for a game ``v(S) = Σ_T c_T [T ⊆ S]`` it returns ``c``.
    """
    players = _check_players(players)
    table = _to_table(values, players)
    for i in range(len(players)):
        v = _split(table, i)
        v[:, 1] -= v[:, 0]  # finite difference in player i (in place on a view)
    return _from_table(table, players)


def inverse_mobius(
    dividends: Mapping[Coalition, float], players: Sequence[str]
) -> dict[Coalition, float]:
    """Inverse Möbius (zeta) transform: ``v(S) = Σ_{T ⊆ S} m(T)``."""
    players = _check_players(players)
    table = _to_table(dividends, players)
    for i in range(len(players)):
        v = _split(table, i)
        v[:, 1] += v[:, 0]  # cumulative sum in player i (in place on a view)
    return _from_table(table, players)


# -- helpers -------------------------------------------------------------------


def _check_players(players: Sequence[str]) -> tuple[str, ...]:
    players = tuple(players)
    duplicates = sorted(p for p, count in Counter(players).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate players: {duplicates}")
    if len(players) > MAX_PLAYERS:
        raise ValueError(
            f"{len(players)} players: exact game computations cost 2^M and are "
            f"limited to M <= {MAX_PLAYERS}"
        )
    return players


def _all_coalitions(players: tuple[str, ...]) -> list[Coalition]:
    """All subsets in bit-mask order (player ``i`` ↔ bit ``i``)."""
    coalitions: list[Coalition] = [frozenset()]
    for player in players:
        coalitions += [s | {player} for s in coalitions]
    return coalitions


def _coalition_sizes(m: int) -> NDArray[np.int64]:
    """``|S|`` for every coalition in bit-mask order (popcount of ``0 .. 2^M − 1``)."""
    sizes = np.zeros(1, dtype=np.int64)
    for _ in range(m):
        sizes = np.concatenate([sizes, sizes + 1])
    return sizes


def _split(table: NDArray, i: int) -> NDArray:
    """View of ``table`` with the membership of player ``i`` on axis 1."""
    return table.reshape(-1, 2, 2**i)


def _coalition_name(coalition: Coalition, players: tuple[str, ...]) -> str:
    return "{" + ", ".join(p for p in players if p in coalition) + "}"


def _to_table(values: Mapping[Coalition, float], players: tuple[str, ...]) -> NDArray[np.float64]:
    known = set(players)
    for coalition in values:
        unknown = set(coalition) - known
        if unknown:
            raise ValueError(
                f"coalition {sorted(coalition)} contains unknown players {sorted(unknown)}"
            )
    table = []
    for coalition in _all_coalitions(players):
        if coalition not in values:
            raise ValueError(f"missing value for coalition {_coalition_name(coalition, players)}")
        table.append(values[coalition])
    return np.asarray(table, dtype=np.float64)


def _from_table(table: NDArray[np.float64], players: tuple[str, ...]) -> dict[Coalition, float]:
    return dict(zip(_all_coalitions(players), table.tolist(), strict=True))
