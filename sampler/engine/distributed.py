"""Sharded runs: the particles of every replica split across the ranks of a ``torch.distributed`` group.

A sharded run keeps positions and cached evaluations where they are computed: rank ``k`` of
``K`` holds the particles with global indices ``[k N / K, (k + 1) N / K)`` of every replica, so
its tensors have shape ``(R, N_local, d)``. What needs all ``N`` particles is made from
collectives, and made so that every rank takes the same decision and the result does not
depend on ``K``:

* **per-particle scalars** (log weights, weight increments, cached log densities: ``8 R N``
  bytes each, float64) are all-gathered, and every rank computes log-sum-exps, ESS, the
  search of the adaptive schedule and the resampling ancestors from the same full ``(R, N)``
  tensors with the same operations as a single process, so the numbers are bit for bit those of
  one process;
* **means of acceptance probabilities** (MCMC step-size adaptation) are exact integer sums of
  fixed-point values (``all_reduce`` of ``R`` int64), the same for any grouping of particles;
* **resampling** draws the ancestors ``(R, N)`` from the run's shared generator on every rank,
  then moves only the rows whose ancestor lives on another rank (one ``all_to_all`` per dtype);
* **random numbers** per particle come from :class:`ParticleStreams`: counter-based streams
  keyed by (seed, draw, block of global indices), never by rank.

Trainable transports train **data-parallel** (DDP-style) with the helpers at the end of this
module: every rank draws its share (:func:`local_batch`) of each training batch from its own
stream (:func:`rank_seed`), computes the loss on it, and the gradients are summed or averaged
over the ranks (:func:`sum_gradients`, :func:`average_gradients`: one ``all_reduce`` per dtype of
``number of parameters x itemsize`` bytes) before every rank takes the same optimizer step;
other training statistics are summed with :func:`all_reduce_sum`, and a freshly initialized
model is copied from rank 0 with :func:`broadcast_parameters`.

:func:`init_from_env` starts the default process group from ``torchrun``'s environment; a
:class:`Shard` with ``world_size == 1`` (no process group) runs the same scheme in one process
and gives the same result as any number of ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from sampler.core.particles import Particles
from sampler.errors import ConfigurationError, DistributedError

__all__ = [
    "init_from_env",
    "is_initialized",
    "rank",
    "world_size",
    "is_main_process",
    "agree",
    "shutdown",
    "default_timeout",
    "Shard",
    "ParticleStreams",
    "shard_bounds",
    "block_size",
    "local_batch",
    "rank_seed",
    "all_reduce_sum",
    "sum_gradients",
    "average_gradients",
    "broadcast_parameters",
    "replicated_sampling",
]

log = logging.getLogger("sampler.engine.distributed")

#: Seconds a collective waits for the other ranks before failing (``SAMPLER_DIST_TIMEOUT`` overrides).
DEFAULT_TIMEOUT_S = 300.0
#: Random streams split the N particles into at most this many blocks (each at least MIN_BLOCK).
MAX_BLOCKS = 64
MIN_BLOCK = 256


# -- the process group ------------------------------------------------------------------------------
def _dist():
    import torch.distributed as dist

    return dist


def is_initialized() -> bool:
    """Whether a default ``torch.distributed`` process group exists."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return _dist().get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of ranks in the default group (1 without one)."""
    return _dist().get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and without a process group): the rank that prints and writes files."""
    return rank() == 0


def default_timeout() -> datetime.timedelta:
    """The collective timeout: ``SAMPLER_DIST_TIMEOUT`` seconds, else :data:`DEFAULT_TIMEOUT_S`."""
    text = os.environ.get("SAMPLER_DIST_TIMEOUT")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigurationError(f"SAMPLER_DIST_TIMEOUT must be a number of seconds, got {text!r}") from None
    if not seconds > 0:
        raise ConfigurationError(f"SAMPLER_DIST_TIMEOUT must be positive, got {text!r}")
    return datetime.timedelta(seconds=seconds)


def init_from_env(backend: str | None = None, timeout: float | datetime.timedelta | None = None) -> bool:
    """Start the default process group from ``torchrun``'s variables; return whether one exists.

    Does nothing (and returns True) when a group is already initialized, and nothing (returning
    False) when ``RANK``/``WORLD_SIZE`` are not set, so a plain ``python`` run stays single-process.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else Gloo. With
            NCCL the CUDA device of this process becomes ``LOCAL_RANK``.
        timeout: how long a collective waits for the other ranks before failing with an error
            (seconds or a timedelta; default :func:`default_timeout`). A rank that raises makes
            its peers fail after at most this long instead of hanging.
    """
    dist = _dist()
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if timeout is None:
        timeout = default_timeout()
    elif not isinstance(timeout, datetime.timedelta):
        timeout = datetime.timedelta(seconds=float(timeout))
    dist.init_process_group(backend, timeout=timeout)
    log.debug("initialized %s process group: rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return True


def _comm_device(group=None) -> torch.device:
    """Where the group's collectives take tensors: CUDA for NCCL, else the CPU."""
    nccl = _dist().get_backend(group) == "nccl"
    return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")


def _group_info(group: Any = None) -> tuple[int, int]:
    """``(rank, world size)`` in ``group`` (the default group; ``(0, 1)`` without one)."""
    if group is None and not is_initialized():
        return 0, 1
    dist = _dist()
    return dist.get_rank(group), dist.get_world_size(group)


def _collective(what: str, fn, *args, group: Any = None, **kwargs) -> None:
    """Run the collective ``fn(*args, group=group, **kwargs)``; a failure raises :class:`DistributedError`."""
    try:
        fn(*args, group=group, **kwargs)
    except RuntimeError as exc:  # DistBackendError and gloo/NCCL timeouts are RuntimeErrors
        rank_, world = _group_info(group)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(
            f"rank {rank_} of {world}: {what} failed. Another rank probably raised, stopped, or fell "
            f"behind by more than the process group's timeout (set it with init_from_env(timeout=...) or "
            f"SAMPLER_DIST_TIMEOUT); look for the first error in the other ranks' output. Cause: {first}"
        ) from exc


def agree(value: int) -> int:
    """Rank 0's ``value`` on every rank of the default group (``value`` itself without a group)."""
    if world_size() == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_comm_device())
    _dist().broadcast(t, src=0)
    return int(t.item())


def shutdown(wait: bool = True) -> None:
    """Destroy the default process group (after a barrier if ``wait``); nothing without one.

    A process that exits with its group still alive may abort at exit ("terminate called
    without an active exception"); the command line calls this for the group it started.
    """
    if not is_initialized():
        return
    dist = _dist()
    try:
        if wait:
            dist.barrier()
    finally:
        dist.destroy_process_group()


# -- the particle axis ------------------------------------------------------------------------------
def shard_bounds(n_particles: int, n_ranks: int) -> list[int]:
    """Global particle index where each rank's shard starts, plus N: ``[0, ..., N]`` (length K + 1)."""
    return [k * n_particles // n_ranks for k in range(n_ranks + 1)]


def block_size(n_particles: int) -> int:
    """Particles per random-stream block: a function of N only (never of the number of ranks)."""
    return max(MIN_BLOCK, -(-n_particles // MAX_BLOCKS))


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_seed(seed: int, draw: int, block: int) -> int:
    """The 63-bit seed of block ``block`` of draw number ``draw`` of a run seeded with ``seed``."""
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ draw) ^ block) >> 1


class ParticleStreams:
    """Per-particle random numbers that depend on the global particle index, not on the rank.

    Draw number ``c`` of a run (each call of :meth:`randn` / :meth:`rand` is one draw; every rank
    makes the same calls in the same order) splits the particle axis into fixed blocks of
    :func:`block_size` ``(N)`` global indices. Block ``j`` is generated as one
    ``(R, len_j, *tail)`` tensor from a generator seeded with :func:`stream_seed` ``(seed, c, j)``;
    a rank generates only the blocks that overlap its shard ``[start, stop)`` and keeps its rows.
    So rows ``[a, b)`` are the same whichever rank draws them: at most ``MAX_BLOCKS`` blocks per
    draw, and a loop over blocks, never over particles.

    Args:
        seed: the run's seed.
        n_particles: N, the global number of particles per replica.
        start: first global index of this rank's particles.
        stop: one past the last global index of this rank's particles.
        device: where the numbers are generated.
    """

    def __init__(self, seed: int, n_particles: int, start: int, stop: int, device: torch.device):
        self.seed = int(seed)
        self.n_particles = int(n_particles)
        self.start, self.stop = int(start), int(stop)
        self.block = block_size(self.n_particles)
        self.device = torch.device(device)
        #: Number of draws made so far (saved in checkpoints).
        self.counter = 0
        self._generator = torch.Generator(device=self.device)

    def _draw(self, fn, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        r, n_local, *tail = shape
        if n_local != self.stop - self.start:
            raise ValueError(
                f"per-particle draws must have shape (R, {self.stop - self.start}, ...), got {tuple(shape)}"
            )
        draw, self.counter = self.counter, self.counter + 1
        b, n = self.block, self.n_particles
        parts = []
        for j in range(self.start // b, (self.stop - 1) // b + 1):
            lo, hi = j * b, min((j + 1) * b, n)
            self._generator.manual_seed(stream_seed(self.seed, draw, j))
            block = fn((r, hi - lo, *tail), generator=self._generator, device=self.device, dtype=dtype)
            parts.append(block[:, max(self.start, lo) - lo : min(self.stop, hi) - lo])
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def randn(self, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        """Standard normal draws of ``shape = (R, N_local, *tail)`` for this rank's particles."""
        return self._draw(torch.randn, shape, dtype)

    def rand(self, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        """Uniform draws on [0, 1) of ``shape = (R, N_local, *tail)`` for this rank's particles."""
        return self._draw(torch.rand, shape, dtype)


@attrs.frozen
class _MovePlan:
    """Which rows a resampling moves between ranks (see :meth:`Shard.select`)."""

    send_rows: Tensor  # (S,) local flat rows to send, ordered by destination rank
    send_counts: list[int]  # (K,) rows sent to each rank
    recv_counts: list[int]  # (K,) rows received from each rank
    rows: Tensor  # (R * N_local,) for each new local slot: its row in [local rows; received rows]


class Shard:
    """This process's share of the particle axis, and the collectives a sharded run needs.

    Rank ``k`` of ``K`` owns the global particle indices ``[start, stop)`` (:func:`shard_bounds`)
    of every replica. With ``world_size == 1`` (no process group) every method is the identity
    or a local computation, with the same numerics as ``K`` ranks.

    Args:
        n_particles: N, the global number of particles per replica.
        device: where the run's tensors live. Collectives run on the group backend's device
            (CPU for Gloo, CUDA for NCCL); tensors are moved there and back when it differs.
        group: a process group (default: the default group when one is initialized, else none).
    """

    def __init__(self, n_particles: int, device: torch.device | str, group: Any = None):
        self.device = torch.device(device)
        self.group = group
        use_group = group is not None or is_initialized()
        dist = _dist()
        self.rank = dist.get_rank(group) if use_group else 0
        self.world_size = dist.get_world_size(group) if use_group else 1
        self.n_particles = int(n_particles)
        if self.n_particles < self.world_size:
            raise ConfigurationError(
                f"a run sharded over {self.world_size} ranks needs at least one particle per rank, "
                f"got n_particles={n_particles}"
            )
        self.bounds = shard_bounds(self.n_particles, self.world_size)
        self.start, self.stop = self.bounds[self.rank], self.bounds[self.rank + 1]
        self.sizes = [b - a for a, b in zip(self.bounds, self.bounds[1:])]
        self.comm_device = _comm_device(group) if use_group else torch.device("cpu")
        self._cache: list[tuple[Tensor, Tensor]] = []

    @property
    def n_local(self) -> int:
        """N_local, the particles per replica on this rank."""
        return self.stop - self.start

    def __repr__(self) -> str:
        where = f"particles=[{self.start}, {self.stop}) of {self.n_particles}"
        return f"Shard(rank={self.rank}, world_size={self.world_size}, {where})"

    # -- collectives ----------------------------------------------------------------------------
    def _collective(self, what: str, fn, *args, **kwargs) -> None:
        _collective(what, fn, *args, group=self.group, **kwargs)

    def remember(self, local: Tensor, full: Tensor) -> None:
        """Record that :meth:`gather` of ``local`` is ``full`` (tensors are never modified in place)."""
        if self.world_size > 1:
            self._cache = [(local, full), *self._cache[:3]]

    def gather(self, values: Tensor, what: str = "per-particle values", keep: bool = False) -> Tensor:
        """All ranks' shards along the particle axis: ``(R, N_local, ...)`` -> ``(R, N, ...)``.

        One ``all_gather`` of ``R * ceil(N / K) * prod(...)`` elements per rank (shards are
        padded to equal size), unless ``values`` was gathered (with ``keep``) or
        :meth:`remember` ed before: log weights are gathered once and reused by the schedule,
        the reweighting and the resampling of a stage.
        """
        if self.world_size == 1:
            return values
        for local, full in self._cache:
            if local is values:
                return full
        if values.shape[1] != self.n_local:
            raise ValueError(f"expected {self.n_local} particles on rank {self.rank}, got shape {tuple(values.shape)}")
        pad = max(self.sizes) - self.n_local
        buf = values
        if pad:
            buf = torch.cat([values, values.new_zeros((values.shape[0], pad, *values.shape[2:]))], 1)
        buf = buf.contiguous().to(self.comm_device)
        out = [torch.empty_like(buf) for _ in range(self.world_size)]
        self._collective(f"all_gather of {what}", _dist().all_gather, out, buf)
        full = torch.cat([o[:, :n] for o, n in zip(out, self.sizes)], 1).to(values.device)
        if keep:
            self.remember(values, full)
        return full

    def local(self, full: Tensor) -> Tensor:
        """This rank's rows of a global ``(R, N, ...)`` tensor (a copy)."""
        if self.world_size == 1:
            return full
        return full[:, self.start : self.stop].contiguous()

    def sum_ints(self, values: Sequence[int | Tensor]) -> list[int]:
        """Integer counts summed over the ranks (one ``all_reduce`` of ``len(values)`` int64)."""
        if self.world_size == 1:
            return [int(v) for v in values]
        t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=self.comm_device)
        self._collective("all_reduce of evaluation counts", _dist().all_reduce, t)
        return [int(v) for v in t.tolist()]

    def agree(self, value: int) -> int:
        """Rank 0's ``value`` (an int, e.g. a seed drawn at random) on every rank."""
        if self.world_size == 1:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.comm_device)
        src = 0 if self.group is None else _dist().get_global_rank(self.group, 0)
        self._collective("broadcast of the seed", _dist().broadcast, t, src=src)
        return int(t.item())

    def mean_probability(self, values: Tensor) -> Tensor:
        """Mean over all N particles of probabilities ``(R, N_local)`` in [0, 1] -> ``(R,)`` float64.

        Summed exactly as fixed-point integers (resolution ``2^-bits``, ``bits = min(40, 62 -
        log2 N)``) so the result is the same bits for every split of the particles.
        """
        bits = min(40, 62 - math.ceil(math.log2(max(self.n_particles, 2))))
        scale = float(2**bits)
        q = torch.round(values.to(torch.float64).clamp(0.0, 1.0) * scale).to(torch.int64).sum(-1)
        if self.world_size > 1:
            buf = q.to(self.comm_device)
            self._collective("all_reduce of acceptance rates", _dist().all_reduce, buf)
            q = buf.to(values.device)
        return q.to(torch.float64) / scale / self.n_particles

    # -- resampling -----------------------------------------------------------------------------
    def _plan(self, ancestors: Tensor) -> _MovePlan:
        """Rows to send and receive so that slot ``i`` of rank ``k`` gets particle ``ancestors[:, i]``."""
        r, n = ancestors.shape
        k, me, dev = self.world_size, self.rank, ancestors.device
        ends = torch.tensor(self.bounds[1:], dtype=torch.int64, device=dev)
        owner = torch.searchsorted(ends, ancestors, right=True)  # (R, N) rank holding the ancestor
        dest = torch.searchsorted(ends, torch.arange(n, device=dev), right=True).expand(r, n)  # rank of the slot
        flat = torch.arange(r, device=dev)[:, None] * n + ancestors  # global row id of the ancestor
        remote = owner != dest
        # Unique (source, destination, row) triples, sorted: rows grouped by rank pair, each row sent once.
        key = torch.unique((owner * k + dest)[remote] * (r * n) + flat[remote])
        pair, row = key // (r * n), key % (r * n)
        src, dst = pair // k, pair % k
        sending = src == me
        send_flat = row[sending]
        send_rows = (send_flat // n) * self.n_local + (send_flat % n - self.start)
        send_counts = torch.bincount(dst[sending], minlength=k)
        receiving = dst == me
        recv_key = src[receiving] * (r * n) + row[receiving]  # sorted: by source rank, then row
        recv_counts = torch.bincount(src[receiving], minlength=k)
        own = owner[:, self.start : self.stop]
        anc = ancestors[:, self.start : self.stop]
        local_rows = torch.arange(r, device=dev)[:, None] * self.n_local + (anc - self.start)
        wanted = own * (r * n) + flat[:, self.start : self.stop]
        pos = torch.searchsorted(recv_key, wanted).clamp_(max=max(recv_key.numel() - 1, 0))
        rows = torch.where(own == me, local_rows, r * self.n_local + pos)
        return _MovePlan(send_rows, send_counts.tolist(), recv_counts.tolist(), rows.reshape(-1))

    def _move(self, tensors: list[Tensor], plan: _MovePlan) -> list[Tensor]:
        """Apply ``plan`` to per-particle tensors ``(R, N_local, ...)``: one ``all_to_all`` per dtype."""
        r = tensors[0].shape[0]
        flats = [t.reshape(r * self.n_local, -1) for t in tensors]
        out: list[Tensor | None] = [None] * len(tensors)
        for dtype in dict.fromkeys(t.dtype for t in flats):
            members = [i for i, t in enumerate(flats) if t.dtype == dtype]
            widths = [flats[i].shape[1] for i in members]
            packed = torch.cat([flats[i] for i in members], 1) if len(members) > 1 else flats[members[0]]
            send = packed[plan.send_rows].contiguous().to(self.comm_device)
            recv = send.new_empty((sum(plan.recv_counts), packed.shape[1]))
            self._collective(
                "all_to_all of resampled particles",
                _dist().all_to_all_single,
                recv,
                send,
                output_split_sizes=plan.recv_counts,
                input_split_sizes=plan.send_counts,
            )
            moved = torch.cat([packed, recv.to(packed.device)], 0)[plan.rows]
            for i, part in zip(members, moved.split(widths, 1)):
                out[i] = part.reshape(tensors[i].shape)
        return out  # type: ignore[return-value]

    def select(self, particles: Particles, ancestors: Tensor) -> Particles:
        """This rank's particles after resampling with global ``ancestors`` ``(R, N)``.

        Every rank passes the same ancestors (drawn from the shared generator). Positions,
        cached evaluations and extras of ancestors held by another rank are received with
        ``all_to_all``; rows staying on their rank are copied locally. Bytes moved per rank are
        at most ``R * N_local * (bytes of one particle's row)``: ``d`` positions, ``2 d``
        cached gradients when present, 2 float64 log densities, and the extras. The log weights
        are left to the caller (set to ``-log N`` where a replica was resampled).
        """
        if self.world_size == 1:
            return particles.gather(ancestors)
        plan = self._plan(ancestors)
        ev = particles.evaluation
        fields = {"x": particles.x, "log_ref": ev.log_ref, "log_target": ev.log_target}
        if ev.grad_ref is not None:
            fields["grad_ref"] = ev.grad_ref
        if ev.grad_target is not None:
            fields["grad_target"] = ev.grad_target
        fields.update({f"extra:{k}": v for k, v in particles.extras.items()})
        moved = dict(zip(fields, self._move(list(fields.values()), plan)))
        evaluation = attrs.evolve(
            ev,
            log_ref=moved["log_ref"],
            log_target=moved["log_target"],
            grad_ref=moved.get("grad_ref"),
            grad_target=moved.get("grad_target"),
        )
        extras = {k: moved[f"extra:{k}"] for k in particles.extras}
        return attrs.evolve(particles, x=moved["x"], evaluation=evaluation, extras=extras)


# -- data-parallel training -------------------------------------------------------------------------
def local_batch(batch_size: int, group: Any = None) -> int:
    """This rank's share of a training batch of ``batch_size`` items (``batch_size`` without a group).

    Rank ``k`` of ``K`` gets ``floor((k + 1) B / K) - floor(k B / K)`` items (:func:`shard_bounds`),
    so the shares differ by at most one and sum to ``B``. Raises :class:`ConfigurationError`
    when ``B < K`` (a rank would get an empty batch).
    """
    rank_, world = _group_info(group)
    batch_size = int(batch_size)
    if batch_size < world:
        raise ConfigurationError(
            f"a training batch of {batch_size} cannot be split over {world} ranks (at least one item per rank); "
            "use a larger batch"
        )
    bounds = shard_bounds(batch_size, world)
    return bounds[rank_ + 1] - bounds[rank_]


_RANK_SALT = 0xD1B54A32D192ED03


def rank_seed(seed: int, group: Any = None) -> int:
    """The seed of this rank's own training stream, derived from the run's ``seed``.

    ``seed`` itself without a group or with one rank (so single-process training is unchanged),
    otherwise a 63-bit splitmix64 hash of ``(seed, rank)``: the ranks draw different training
    batches, and the same ranks with the same seed draw the same ones.
    """
    rank_, world = _group_info(group)
    if world == 1:
        return int(seed)
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ ((_RANK_SALT * (rank_ + 1)) & _MASK64)) >> 1


def all_reduce_sum(values: Tensor, what: str = "training statistics", group: Any = None) -> Tensor:
    """``values`` summed over the ranks (a new tensor, same shape, dtype and device; ``values`` itself without a group).

    One ``all_reduce`` of ``values.numel()`` elements. Every rank receives the same sums, so
    decisions taken from them (a bisection, a step-size update, a stopping rule) agree.
    Sum float statistics in float64 and counts in int64.
    """
    _, world = _group_info(group)
    if world == 1:
        return values
    buf = values.detach().to(device=_comm_device(group), copy=True).contiguous()
    _collective(f"all_reduce of {what}", _dist().all_reduce, buf, group=group)
    return buf.to(values.device)


def _reduce_gradients(parameters: Iterable[Tensor], average: bool, group: Any) -> int:
    params = [p for p in parameters if p.requires_grad]
    _, world = _group_info(group)
    if world == 1 or not params:
        return 0
    dev = _comm_device(group)
    sent = 0
    for dtype in dict.fromkeys(p.dtype for p in params):
        members = [p for p in params if p.dtype == dtype]
        for p in members:
            if p.grad is not None and p.grad.is_sparse:
                raise ConfigurationError("data-parallel training does not support sparse gradients")
        # A flag per parameter says which ranks have a gradient: a parameter with none on some
        # rank counts as zero there, and one with none on every rank keeps grad None everywhere.
        flags = torch.tensor([p.grad is not None for p in members], dtype=dtype, device=dev)
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dev) for p in members]
        buf = torch.cat([*parts, flags])
        _collective(f"all_reduce of {dtype} gradients", _dist().all_reduce, buf, group=group)
        sent += buf.numel() * buf.element_size()
        m = len(members)
        grads, have = buf[:-m], buf[-m:] > 0
        if average:
            grads = grads / world
        for p, g, h in zip(members, grads.split([p.numel() for p in members]), have.tolist()):
            if not h:
                continue
            g = g.view_as(p).to(p.device)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
    return sent


def sum_gradients(parameters: Iterable[Tensor], group: Any = None) -> int:
    """Replace the ``.grad`` of every parameter by its sum over the ranks; return bytes reduced.

    For a loss that each rank scales by its share of the batch (``loss_local * n_local / B``,
    :func:`local_batch`), the sum is the gradient of the full batch's loss, also for unequal
    shares. All ranks must pass the same parameters in the same order (the same model). The
    gradients are flattened into one buffer per dtype, with one flag per parameter, and reduced
    with one ``all_reduce`` each (``(number of parameters + number of tensors) x itemsize``
    bytes). A parameter without a gradient on some rank counts as zero there; one without a
    gradient on every rank is skipped on all of them. Parameters with ``requires_grad=False``
    are ignored. Without a group nothing happens (returns 0).
    """
    return _reduce_gradients(parameters, False, group)


def average_gradients(parameters: Iterable[Tensor], group: Any = None) -> int:
    """Replace the ``.grad`` of every parameter by its mean over the ranks (sum / world size); return bytes reduced.

    The DDP convention for equal per-rank batches with a per-rank mean loss; see
    :func:`sum_gradients` for unequal shares and the details. Nothing happens without a group.
    """
    return _reduce_gradients(parameters, True, group)


def broadcast_parameters(tensors: Iterable[Tensor], src: int = 0, group: Any = None) -> None:
    """Overwrite ``tensors`` (e.g. ``list(module.parameters()) + list(module.buffers())``) in place
    with rank ``src``'s values, so a model initialized from each rank's own random state starts
    the same everywhere. One ``broadcast`` per dtype; nothing without a group.
    """
    tensors = list(tensors)
    _, world = _group_info(group)
    if world == 1 or not tensors:
        return
    dist = _dist()
    root = src if group is None else dist.get_global_rank(group, src)
    dev = _comm_device(group)
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        members = [t for t in tensors if t.dtype == dtype]
        buf = torch.cat([t.detach().reshape(-1).to(dev) for t in members])
        _collective(f"broadcast of {dtype} parameters", dist.broadcast, buf, src=root, group=group)
        with torch.no_grad():
            for t, v in zip(members, buf.split([t.numel() for t in members])):
                t.copy_(v.view_as(t).to(t.device))


@contextlib.contextmanager
def replicated_sampling(
    method: str, unsharded: Sequence[str], trained: bool = True, stacklevel: int = 3
) -> Iterator[None]:
    """Context for the sampling run of a method that trained data-parallel but cannot shard its sampling.

    Under a process group with ``unsharded`` steps (``Pipeline.unshardable(short=True)``), warns once
    that every rank runs the same sampling run from the same trained model (rank 0 writes;
    ``trained``: the model was trained in this run, data-parallel), and
    silences the engine's generic "every rank runs the whole run" warning inside the block.
    Without a group, or when nothing blocks sharding, it does nothing.
    """
    if not is_initialized() or not unsharded:
        yield
        return
    what = f"trained data-parallel over {world_size()} rank(s), but its sampling run" if trained else "its sampling run"
    warnings.warn(
        f"{method!r} {what} cannot be sharded "
        f"({', '.join(unsharded)} do(es) not support sharded runs): every rank draws the same samples from the "
        "same trained model, and rank 0 writes",
        stacklevel=stacklevel,
    )
    with warnings.catch_warnings():
        # the engine's message names the steps by repr, which may span lines
        warnings.filterwarnings("ignore", message=r"(?s).*every rank runs the whole run instead", category=UserWarning)
        yield
