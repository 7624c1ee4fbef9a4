"""Per-gradient throughput of this project's kernels beside BlackJAX's, measured in one process.

``python -m sampler_benchmarks.throughput`` (or ``sampler bench --suite throughput``) runs, for each
case, this project's method and -- when the optional ``peers`` extra is installed (``pip install
-e ".[peers]"``: jax, blackjax) -- BlackJAX's equivalent on the same target, N, dtype (float32) and
annealing path, and prints gradient evaluations per second of both and their ratio.

Cases:

* ``smc``: adaptive tempered SMC, ESS target 0.5, 10 MCMC moves per temperature, HMC with 5
  leapfrog steps or MALA, from the same Gaussian reference (our prior reference, not ``smc``'s
  default Laplace fit) to gmm40, funnel and manywell, N = 2000 and 20000, one replica.
  BlackJAX: ``blackjax.adaptive_tempered_smc`` with the same prior (our reference), likelihood
  (target / reference) and kernel, fixed step size, jitted step.
* ``sweep``: the same on a standard Gaussian target with a standard Gaussian reference, which SMC
  reaches in one temperature: N from 10^3 to 10^6 particles and d from 2 to 200, HMC moves -- a
  grid of pure kernel throughput.
* ``chains``: ``hmc`` chains (R = 4, 5 leapfrog steps, identity metric) and ``mala`` chains
  (identity metric) against BlackJAX's HMC and MALA kernels vmapped over 4 chains and scanned
  (``jax.lax.scan``), same number of iterations, on two targets: the funnel (d = 10, a gradient
  of a few dozen flops: per-iteration overhead is all there is to measure) and a Bayesian
  logistic regression (:class:`LogisticRegression`, d = 25, 1000 observations: a gradient of
  two matrix products, as a posterior's). With ``compile=True`` ours run in fused segments
  (:mod:`sampler_plugins.mcmc.fused`).

Gradient counts: ours from the result (``n_grad_evals``); BlackJAX's by construction (each
temperature initializes the kernel state, one gradient per particle, and each HMC move takes one
gradient per leapfrog step, each MALA move one). Times: ours is the run's wall time; BlackJAX's
is the second run of the same jitted code with another key (steady state, compilation excluded;
the first run's time is reported as ``compile+run``). Every measured run, either side's, starts
after a full garbage collection. Medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

import sampler
from sampler.errors import ConfigurationError

#: One leapfrog count and moves per temperature, as in the issue's side-by-side measurement.
N_LEAPFROG = 5
N_MOVES = 10
TARGET_ESS = 0.5
CASES = ("smc", "chains", "sweep")
SMC_TARGETS = ("gmm40", "funnel", "manywell")
#: The chains cases: (target, kernel).
CHAIN_CASES = (("funnel", "hmc"), ("logreg", "hmc"), ("funnel", "mala"), ("logreg", "mala"))
SMC_SIZES = (2000, 20000)
SWEEP_SIZES = (1000, 10_000, 100_000, 1_000_000)
SWEEP_DIMS = (2, 20, 200)
#: Step sizes both sides start from (ours then adapts; BlackJAX keeps it), per target.
STEP_SIZES = {"gmm40": 0.5, "funnel": 0.1, "manywell": 0.1, "gaussian": 0.3, "logreg": 0.25}


@attrs.frozen
class Measurement:
    """One side of one case: gradient evaluations, seconds, and gradients per second."""

    grads: int
    seconds: float
    compile_seconds: float = math.nan

    @property
    def rate(self) -> float:
        return self.grads / self.seconds if self.seconds > 0 else math.nan


@attrs.frozen
class Row:
    """A case with both sides (``peer`` is ``None`` without the peers extra)."""

    case: str
    target: str
    kernel: str
    n: int
    dim: int
    ours: Measurement
    peer: Measurement | None

    @property
    def ratio(self) -> float:
        return self.ours.rate / self.peer.rate if self.peer is not None else math.nan


# -- this project ---------------------------------------------------------------------------------
class LogisticRegression(sampler.Target):
    """A Bayesian logistic regression, ``log p(beta) = sum_i [y_i z_i - log(1 + e^{z_i})] - |beta|^2 / 2``.

    ``z = X beta`` for ``n_obs`` observations of ``dim`` covariates: ``X`` iid ``N(0, 1/dim)``,
    ``y_i ~ Bernoulli(sigmoid(x_i . beta*))`` with ``beta* ~ N(0, I)``, all drawn from a NumPy
    generator seeded ``seed``; prior ``N(0, I)`` (its normalizer dropped). The gradient is left to
    autograd (``torch.func`` when compiled), as BlackJAX's side leaves it to ``jax.grad``.
    """

    def __init__(self, dim: int = 25, n_obs: int = 1000, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.covariates = rng.standard_normal((n_obs, dim)) / math.sqrt(dim)
        self.outcomes = (rng.random(n_obs) < 1 / (1 + np.exp(-self.covariates @ rng.standard_normal(dim)))) * 1.0

    @property
    def name(self) -> str:
        return "logreg"

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.constant("covariates", like=x).transpose(-2, -1)  # (..., n_obs)
        y = self.constant("outcomes", like=x)
        return (y * z - torch.nn.functional.softplus(z)).sum(-1) - 0.5 * x.square().sum(-1)


def _target(name: str, dim: int | None = None) -> sampler.Target:
    if name == "logreg":
        return LogisticRegression()
    return sampler.get_target("gaussian", dim=dim) if name == "gaussian" else sampler.get_target(name)


def ours_smc(name: str, n: int, kernel: str, seed: int, dim: int | None = None, compile: bool = False) -> Measurement:
    """Our ``smc`` with the case's settings; gradients and wall time from the result.

    ``compile=True`` fuses the kernel's steps (the kernels' ``compile`` option).

    ``reference="prior"``: BlackJAX's SMC starts from the prior it is given (our prior
    reference), where ``smc``'s default ``"auto"`` first fits a Laplace approximation (L-BFGS;
    on the funnel 0.2 s of wall time that no BlackJAX step does, and a fit these targets reject).
    """
    options: dict[str, Any] = dict(
        kernel=kernel,
        n_steps=N_MOVES,
        target_ess=TARGET_ESS,
        step_size=STEP_SIZES[name],
        reference="prior",
        compile=compile,
    )
    if kernel == "hmc":
        options["n_leapfrog"] = N_LEAPFROG
    res = sampler.sample(
        _target(name, dim), method="smc", n_particles=n, n_replicas=1, seed=seed, dtype="float32", **options
    )
    return Measurement(res.n_grad_evals, res.wall_time)


def ours_chains(
    n_draws: int, n_warmup: int, seed: int, compile: bool = False, name: str = "funnel", kernel: str = "hmc"
) -> Measurement:
    """Our ``kernel`` chains (R = 4) on target ``name``; HMC with ``N_LEAPFROG`` steps per iteration as BlackJAX's.

    The per-iteration workload of BlackJAX's side: ``trajectory="fixed"`` (the default ChEES
    chains vary their lengths) and ``metric="identity"`` (BlackJAX's kernels are given the identity
    mass matrix; our default metrics add a matrix product per step, and the dense one jitters
    the lengths). Our warm-up still adapts the step size, which BlackJAX's side does not.
    """
    options: dict[str, Any] = {"n_leapfrog": N_LEAPFROG, "trajectory": "fixed"} if kernel == "hmc" else {}
    res = sampler.sample(
        _target(name),
        method=kernel,
        n_particles=n_draws,
        n_replicas=4,
        seed=seed,
        dtype="float32",
        n_warmup=n_warmup,
        metric="identity",
        compile=compile,
        **options,
    )
    return Measurement(res.n_grad_evals, res.wall_time)


# -- BlackJAX -----------------------------------------------------------------------------------------
def peers_available() -> bool:
    """Whether jax and blackjax import (the ``peers`` extra)."""
    try:
        import blackjax  # noqa: F401
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def _jax_log_density(target: sampler.Target) -> Callable[[Any], Any]:
    """The target's log density in jax.numpy for one point ``(d,)`` (same constants as ours)."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    name = target.name
    if name == "gmm40":
        means = jnp.asarray(np.asarray(target.means), dtype=jnp.float32)  # type: ignore[attr-defined]
        std = float(target.std)  # type: ignore[attr-defined]
        norm = -target.dim * (math.log(std) + 0.5 * math.log(2 * math.pi)) - math.log(means.shape[0])
        return lambda x: logsumexp(-0.5 * jnp.sum((x - means) ** 2, -1) / std**2) + norm
    if name == "funnel":
        d = target.dim
        norm = -0.5 * math.log(2 * math.pi * 9) - 0.5 * (d - 1) * math.log(2 * math.pi)
        return lambda x: -(x[0] ** 2) / 18 - 0.5 * jnp.exp(-x[0]) * jnp.sum(x[1:] ** 2) - 0.5 * (d - 1) * x[0] + norm
    if name == "manywell":
        return lambda x: -jnp.sum(x[0::2] ** 4 - 6 * x[0::2] ** 2 - 0.5 * x[0::2] + 0.5 * x[1::2] ** 2)
    if name.startswith("gaussian"):
        return lambda x: -0.5 * jnp.sum(x**2)
    if isinstance(target, LogisticRegression):
        covariates = jnp.asarray(target.covariates, dtype=jnp.float32)
        outcomes = jnp.asarray(target.outcomes, dtype=jnp.float32)

        def log_density(x: Any) -> Any:
            z = covariates @ x
            return jnp.sum(outcomes * z - jax.nn.softplus(z)) - 0.5 * jnp.sum(x**2)

        return log_density
    raise ValueError(f"no jax transcription of {name!r}")


def _jax_reference(target: sampler.Target) -> tuple[Any, Any, Callable[[Any], Any]]:
    """Our default reference ``N(loc, diag(scale^2))`` as (loc, scale, log density) in jax."""
    import jax.numpy as jnp

    d = target.dim
    loc = jnp.broadcast_to(jnp.asarray(np.asarray(target.reference_loc, dtype=np.float32)), (d,))
    scale = jnp.broadcast_to(jnp.asarray(np.asarray(target.reference_scale, dtype=np.float32)), (d,))
    log_norm = -jnp.sum(jnp.log(scale)) - 0.5 * d * math.log(2 * math.pi)
    return loc, scale, lambda x: -0.5 * jnp.sum(((x - loc) / scale) ** 2) + log_norm


def blackjax_smc(name: str, n: int, kernel: str, seed: int, dim: int | None = None) -> Measurement:
    """BlackJAX adaptive tempered SMC with the case's settings: compile+run, then a timed second run."""
    import blackjax
    import jax
    import jax.numpy as jnp

    target = _target(name, dim)
    log_target = _jax_log_density(target)
    loc, scale, log_ref = _jax_reference(target)
    d = target.dim
    if kernel == "hmc":
        step_fn, init_fn = blackjax.hmc.build_kernel(), blackjax.hmc.init
        params = dict(
            step_size=jnp.full((1,), STEP_SIZES[name]),
            inverse_mass_matrix=jnp.ones((1, d)),
            num_integration_steps=jnp.full((1,), N_LEAPFROG),
        )
        grads_per_move = N_LEAPFROG
    else:
        step_fn, init_fn = blackjax.mala.build_kernel(), blackjax.mala.init
        params = dict(step_size=jnp.full((1,), STEP_SIZES[name]))
        grads_per_move = 1
    smc = blackjax.adaptive_tempered_smc(
        log_ref,
        lambda x: log_target(x) - log_ref(x),
        step_fn,
        init_fn,
        params,
        blackjax.smc.resampling.systematic,
        TARGET_ESS,
        num_mcmc_steps=N_MOVES,
    )
    step = jax.jit(smc.step)

    def run(key: Any) -> tuple[int, float]:
        start = time.perf_counter()
        key, sub = jax.random.split(key)
        x0 = loc + scale * jax.random.normal(sub, (n, d), dtype=jnp.float32)
        state = smc.init(x0)
        temps = 0
        while float(state.tempering_param) < 1.0:
            key, sub = jax.random.split(key)
            state, _ = step(sub, state)
            temps += 1
        jax.block_until_ready(state.particles)
        return temps * n * (N_MOVES * grads_per_move + 1), time.perf_counter() - start

    _, first = run(jax.random.PRNGKey(seed + 1000))
    grads, seconds = run(jax.random.PRNGKey(seed))
    return Measurement(grads, seconds, first)


def blackjax_chains(n_draws: int, n_warmup: int, seed: int, name: str = "funnel", kernel: str = "hmc") -> Measurement:
    """BlackJAX ``kernel`` (HMC or MALA) on target ``name``: 4 chains vmapped, ``n_warmup + n_draws``
    iterations in one ``lax.scan``."""
    import blackjax
    import jax
    import jax.numpy as jnp

    target = _target(name)
    log_target = _jax_log_density(target)
    loc, scale, _ = _jax_reference(target)
    if kernel == "hmc":
        step = blackjax.hmc(log_target, STEP_SIZES[name], jnp.ones(target.dim), N_LEAPFROG)
    else:
        step = blackjax.mala(log_target, STEP_SIZES[name])
    n_iter = n_warmup + n_draws

    @jax.jit
    def run(key: Any) -> Any:
        key, sub = jax.random.split(key)
        x0 = loc + scale * jax.random.normal(sub, (4, target.dim), dtype=jnp.float32)
        states = jax.vmap(step.init)(x0)

        def one(states: Any, key: Any) -> tuple[Any, Any]:
            states, _ = jax.vmap(step.step)(jax.random.split(key, 4), states)
            return states, states.position

        _, draws = jax.lax.scan(one, states, jax.random.split(key, n_iter))
        return draws

    start = time.perf_counter()
    jax.block_until_ready(run(jax.random.PRNGKey(seed + 1000)))
    first = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(run(jax.random.PRNGKey(seed)))
    seconds = time.perf_counter() - start
    return Measurement(4 * (n_iter * (N_LEAPFROG if kernel == "hmc" else 1) + 1), seconds, first)


# -- the suite ----------------------------------------------------------------------------------------
def _collected(run: Callable[[int], Measurement], seed: int) -> Measurement:
    """``run(seed)`` after a full garbage collection, on either side.

    Compiling leaves cyclic garbage (Dynamo's, TorchInductor's, XLA's tracers) that a later
    generation-2 collection frees: 0.2 s inside whichever run comes next, five times a
    compiled chain run's own time.
    """
    gc.collect()
    return run(seed)


def _median(runs: Sequence[Measurement]) -> Measurement:
    """The run with the median rate (its own grads and seconds), compile time from the first."""
    ranked = sorted(runs, key=lambda m: m.rate)
    mid = ranked[len(ranked) // 2]
    return Measurement(mid.grads, mid.seconds, runs[0].compile_seconds)


def run_throughput(
    cases: Sequence[str] = ("smc", "chains", "sweep"),
    *,
    repeats: int = 3,
    sweep_sizes: Sequence[int] = SWEEP_SIZES,
    sweep_dims: Sequence[int] = SWEEP_DIMS,
    smc_sizes: Sequence[int] = SMC_SIZES,
    chain_draws: int = 1000,
    peers: bool | None = None,
    compile: bool = False,
    progress: Callable[[str], None] | None = print,
) -> list[Row]:
    """Measure the ``cases`` (of :data:`CASES`), median of ``repeats`` seeds each; one :class:`Row` per case.

    ``peers=None`` compares with BlackJAX when it is installed (``True`` requires it). The chain
    case runs ``chain_draws`` iterations after ``chain_draws // 2`` of warm-up. ``compile=True``
    runs our kernels with ``compile=True`` and, as BlackJAX's side, times each case's first run
    (compilation included) apart from the measured ones.

    Raises:
        ConfigurationError: an unknown case, ``repeats < 1``, or ``peers=True`` without jax/blackjax.
    """
    unknown = sorted(set(cases) - set(CASES))
    if unknown or not cases:
        raise ConfigurationError(f"throughput cases must be among {', '.join(CASES)}, got {list(cases)}")
    if repeats < 1:
        raise ConfigurationError(f"repeats must be a positive integer, got {repeats}")
    if peers and not peers_available():
        raise ConfigurationError('peers=True needs jax and blackjax: pip install "sampler-engine[peers]"')
    peers = peers_available() if peers is None else peers
    rows: list[Row] = []

    def measure(label: str, ours: Callable[[int], Measurement], peer: Callable[[int], Measurement]) -> tuple:
        first = ours(repeats) if compile else None  # another seed; compiles the steps
        mine = _median([_collected(ours, seed) for seed in range(repeats)])
        if first is not None:
            mine = attrs.evolve(mine, compile_seconds=first.seconds)
        theirs = _median([_collected(peer, seed) for seed in range(repeats)]) if peers else None
        if progress is not None:
            other = f", blackjax {theirs.rate:,.0f}/s" if theirs is not None else ""
            progress(f"{label}: ours {mine.rate:,.0f} gradients/s{other}")
        return mine, theirs

    if "smc" in cases:
        for name in SMC_TARGETS:
            for n in smc_sizes:
                for kernel in ("hmc", "mala"):
                    mine, theirs = measure(
                        f"smc {kernel} {name} N={n}",
                        lambda s, name=name, n=n, kernel=kernel: ours_smc(name, n, kernel, s, compile=compile),
                        lambda s, name=name, n=n, kernel=kernel: blackjax_smc(name, n, kernel, s),
                    )
                    rows.append(Row("smc", name, kernel, n, _target(name).dim, mine, theirs))
    if "chains" in cases:
        for name, kernel in CHAIN_CASES:
            mine, theirs = measure(
                f"{kernel} chains {name} R=4",
                lambda s, name=name, k=kernel: ours_chains(chain_draws, chain_draws // 2, s, compile, name, k),
                lambda s, name=name, k=kernel: blackjax_chains(chain_draws, chain_draws // 2, s, name, k),
            )
            rows.append(Row("chains", name, kernel, chain_draws, _target(name).dim, mine, theirs))
    if "sweep" in cases:
        for d in sweep_dims:
            for n in sweep_sizes:
                if n * d > 2e7:  # keep each case within a few GB and minutes on a small machine
                    continue
                mine, theirs = measure(
                    f"sweep hmc gaussian d={d} N={n}",
                    lambda s, n=n, d=d: ours_smc("gaussian", n, "hmc", s, dim=d, compile=compile),
                    lambda s, n=n, d=d: blackjax_smc("gaussian", n, "hmc", s, dim=d),
                )
                rows.append(Row("sweep", f"gaussian-{d}", "hmc", n, d, mine, theirs))
    return rows


def machine() -> str:
    """What the numbers ran on."""
    threads = torch.get_num_threads()
    peer = ""
    if peers_available():
        import blackjax
        import jax

        peer = f", jax {jax.__version__}, blackjax {blackjax.__version__}"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({threads} threads){peer}"
    )


def markdown(rows: Sequence[Row]) -> str:
    """The table of docs/benchmarks.md."""
    lines = [
        "| case | target | kernel | N | d | ours grads/s [(compile+run s)] | BlackJAX grads/s (compile+run s) "
        "| ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peer = f"{r.peer.rate:,.0f} ({r.peer.compile_seconds:.1f})" if r.peer is not None else "n/a"
        compiled = "" if math.isnan(r.ours.compile_seconds) else f" ({r.ours.compile_seconds:.1f})"
        ours = f"{r.ours.rate:,.0f}{compiled}"
        ratio = "n/a" if r.peer is None else f"{r.ratio:.2f}" if r.ratio >= 0.01 else f"{r.ratio:.1e}"
        lines.append(f"| {r.case} | {r.target} | {r.kernel} | {r.n} | {r.dim} | {ours} | {peer} | {ratio} |")
    return "\n".join(lines)


def write(rows: Sequence[Row], out: str | os.PathLike) -> Path:
    """Write ``results.md`` (machine line and table) and ``results.json`` (every row) into ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text(f"{machine()}\n\n{markdown(rows)}\n")
    records = [{**attrs.asdict(r), "ratio": r.ratio, "ours_rate": r.ours.rate} for r in rows]
    (folder / "results.json").write_text(json.dumps(records, indent=1, default=str))
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m sampler_benchmarks.throughput [--cases smc,chains,sweep] [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="smc,chains,sweep", help="comma-separated: smc, chains, sweep")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--max-n", type=int, default=max(SWEEP_SIZES), help="largest N of the sweep grid")
    parser.add_argument("--out", default=None, help="folder for results.json and results.md")
    parser.add_argument("--compile", action="store_true", help="our kernels with compile=True")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    sizes = [n for n in SWEEP_SIZES if n <= args.max_n]
    rows = run_throughput(cases, repeats=args.repeats, sweep_sizes=sizes, compile=args.compile)
    print(f"\n{machine()}\n\n{markdown(rows)}")
    if args.out:
        write(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
