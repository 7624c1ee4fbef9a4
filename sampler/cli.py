"""The ``sampler`` command line: ``run``, ``diagnose``, ``plot``, ``bench``, ``plugins``, ``targets``, ``methods``.

``sampler run`` with no arguments samples the default target (``gmm40``) with the default
method (``smc``) and prints the summary table.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sampler
from sampler.defaults import DEFAULT_METHOD, DEFAULT_TARGET
from sampler.errors import ConfigurationError, Interrupted, SamplerError, TargetError

if TYPE_CHECKING:
    from sampler.io.checkpoint import CheckpointData
    from sampler.targets.base import Target

# Nothing above imports torch: ``sampler --help`` and argument errors answer at once, and each
# command imports the layers it uses (torch with them).

log = logging.getLogger("sampler")

EXAMPLES = """examples:
  sampler run                                   # smc on gmm40, summary table
  sampler run double-well --method ais -o n_temps=100
  sampler run gaussian --target-option dim=10 --particles 4096 --replicas 8 --seed 1
  sampler run my_model.py:MyTarget --out result.nc
  sampler run my_energy.py:energy --dim 3       # a plain energy function U(x)
  sampler run funnel --checkpoint run.ckpt --checkpoint-every 10
  sampler run --resume run.ckpt                 # continue after Ctrl-C or a crash
  torchrun --nproc-per-node=4 -m sampler run funnel --particles 100000   # particles sharded over 4 processes
  sampler diagnose result.nc
  sampler plot result.nc --out figures/
"""


#: Spellings of booleans and None that ``ast.literal_eval`` does not read (``-o adapt=false``
#: would otherwise be the string "false", which Python treats as true).
_WORDS: dict[str, Any] = {"true": True, "false": False, "none": None, "null": None}


def _parse_value(text: str) -> Any:
    """A Python literal (``20``, ``0.5``, ``True``, ``[1, 2]``), true/false/none in any case, else the string."""
    word = text.strip().lower()
    if word in _WORDS:
        return _WORDS[word]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_options(pairs: Sequence[str] | None, flag: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigurationError(f"{flag} expects key=value (e.g. n_steps=20), got {pair!r}")
        options[key] = _parse_value(value)
    return options


def load_target(spec: str, options: dict[str, Any], dim: int | None = None) -> Target:
    """A target from a registered name or ``path/to/file.py:Name``.

    ``Name`` may be a Target instance, a Target subclass or a factory (called with
    ``options``), or, with ``dim``, an energy function ``U(x)``.
    """
    from sampler.targets.base import Target

    file, sep, attr = spec.rpartition(":")
    if not sep or not file.endswith(".py"):
        return sampler.get_target(spec, **options)
    path = Path(file)
    if not path.is_file():
        raise ConfigurationError(f"target file {file!r} does not exist")
    mod_spec = importlib.util.spec_from_file_location(f"sampler_user_target_{path.stem}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise ConfigurationError(f"cannot import {file!r} as a Python module")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigurationError(f"importing {file!r} failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        names = [n for n in vars(module) if not n.startswith("_")]
        raise ConfigurationError(f"{file!r} has no attribute {attr!r}; it defines: {', '.join(names)}")
    obj = getattr(module, attr)
    if dim is not None:
        if not callable(obj):
            raise ConfigurationError(f"--dim wraps an energy function, but {attr!r} is not callable")
        return sampler.target(energy=obj, dim=dim, name=attr)
    if isinstance(obj, Target):
        return obj
    if callable(obj):
        required = [
            p
            for p in inspect.signature(obj).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if required and not (isinstance(obj, type) and issubclass(obj, Target)):
            raise ConfigurationError(
                f"{attr!r} takes arguments ({', '.join(p.name for p in required)}); pass a Target, a Target class, "
                "a factory without required arguments, or an energy function with --dim D"
            )
        try:
            made = obj(**options)
        except TypeError as exc:
            raise ConfigurationError(f"{attr}(**{options!r}) failed: {exc}") from exc
        if isinstance(made, Target) or (hasattr(made, "log_prob") and hasattr(made, "dim")):
            return made
        raise TargetError(f"{attr!r}() returned {type(made).__name__}, not a sampler.Target")
    raise ConfigurationError(f"{attr!r} is a {type(obj).__name__}; expected a Target, a Target class or a factory")


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.quiet else (True if args.progress else None)


def _resume_target(args: argparse.Namespace, data: CheckpointData) -> Target | None:
    """The target of a run being resumed: as given on the command line, else as recorded."""
    if args.target is not None:
        return load_target(args.target, _parse_options(args.target_option, "--target-option"), args.dim)
    meta = data.run.get("metadata", {})
    spec = meta.get("target_spec")
    if spec is None:
        return None  # recorded by the Python API: resume() finds a registered target by name
    if spec.rpartition(":")[0].endswith(".py"):
        raise ConfigurationError(
            f"this run sampled {spec}; a checkpoint holds no code, so name the target again: "
            f"sampler run {spec} --resume {args.resume}"
        )
    return load_target(spec, meta.get("target_options", {}), meta.get("dim"))


def _cmd_run(args: argparse.Namespace) -> int:
    from sampler.core.allocator import tune_cpu_allocator
    from sampler.engine import distributed

    tune_cpu_allocator()  # this process is ours: keep freed tensor memory for reuse
    # Under torchrun (RANK, WORLD_SIZE, MASTER_ADDR set) join the process group: the particles of
    # a method that supports it are sharded over the ranks; rank 0 alone prints and writes files.
    started = not distributed.is_initialized() and distributed.init_from_env()
    ok = False
    try:
        status = _run_command(args)
        ok = True
        return status
    finally:
        if started:  # every rank waits for rank 0's output, then leaves the group it joined
            distributed.shutdown(wait=ok)


def _run_command(args: argparse.Namespace) -> int:
    from sampler.engine import distributed

    main = distributed.is_main_process()
    out = _checked_out(args.out) if args.out is not None else None
    try:
        result, target, sharded = _sample(args, main)
    except Interrupted as exc:
        print(
            f"sampler: interrupted after {exc.unit} {exc.step}; saved to {exc.checkpoint}\n"
            f"resume with: {_resume_command(args, exc.checkpoint)}",
            file=sys.stderr,
        )
        return 130
    if not main:
        return 0
    report = sampler.summary(result, target=target)
    width = max(len(key) for key, _ in report.rows)  # line up with the summary's columns
    print(report)
    repeat = f"--seed {result.seed}"
    if sharded:
        repeat += " --distributed"  # a plain one-process run draws its random numbers differently
    print(f"{'seed':<{width}}  {result.seed}  (repeat with {repeat})")
    if out is not None:
        return _save(result, out, width)
    return 0


def _sample(args: argparse.Namespace, main: bool) -> tuple[sampler.Result, Target | None, bool]:
    """Run (or resume) the sampling the command line asks for.

    Returns the result, the target, and whether the run was sharded (its particles' random
    streams split per particle, so one process repeats it only with ``--distributed``).
    """
    from sampler.core.runner import capabilities_of
    from sampler.core.settings import _checked_device
    from sampler.core.threads import cpu_threads
    from sampler.engine import distributed
    from sampler.io.checkpoint import Checkpoint, build_metadata, read_checkpoint

    if args.resume:
        data = read_checkpoint(args.resume)
        log.info(
            "resuming %s on %s after stage %d of a previous run", data.run["method"], data.run["target"], data.step
        )
        target = _resume_target(args, data)
        result = sampler.resume(
            args.resume,
            target=target,
            progress=_progress(args) if main else False,
            checkpoint_every=args.checkpoint_every,
            threads=args.threads,
        )
        sharded = bool(data.run.get("sharded"))
    else:
        spec = args.target or DEFAULT_TARGET
        target_options = _parse_options(args.target_option, "--target-option")
        target = load_target(spec, target_options, args.dim)
        options = _parse_options(args.option, "--option")
        seed = args.seed if args.seed is not None else secrets.randbits(31)
        if distributed.world_size() > 1:  # the seed printed (and in the checkpoint name) is rank 0's
            seed = distributed.agree(seed)
        checkpoint = Path(args.checkpoint or f"{_slug(target.name)}-{args.method}-seed{seed}.ckpt")
        runner = sampler.method(args.method, **options)
        can = capabilities_of(runner)
        unshardable: list[str] = getattr(runner, "unshardable", list)()
        sharded = args.distributed or (can.distributed and distributed.world_size() > 1 and not unshardable)
        supports = can.checkpoint
        if not supports and (args.checkpoint or args.checkpoint_every):
            raise ConfigurationError(f"method {args.method!r} does not support checkpoints")
        extra: dict[str, Any] = {}
        if supports:
            metadata = {"target_spec": spec, "target_options": target_options, "dim": args.dim}
            extra["checkpoint"] = Checkpoint(
                checkpoint, args.checkpoint_every, {**metadata, **build_metadata(args.method, options)}
            )
        if not main and not can.distributed:
            extra = {}  # a runner that does not shard runs whole on every rank: only rank 0 saves it
        if args.distributed:
            if not can.distributed:
                raise ConfigurationError(f"method {args.method!r} cannot shard its particles (--distributed)")
            extra["distributed"] = True
        size = can.thread_size(args.particles, args.replicas, target.dim)
        with cpu_threads(args.threads, size, _checked_device(args.device)):
            result = runner.run(
                target,
                n_particles=args.particles,
                n_replicas=args.replicas,
                seed=seed,
                device=args.device,
                dtype=args.dtype,
                progress=_progress(args) if main else False,
                **extra,
            )
    return result, target, sharded


def _threads(text: str) -> int | str | None:
    """``--threads``: ``auto``, ``torch`` (leave torch's setting) or a positive integer."""
    if text in ("auto", "torch"):
        return "auto" if text == "auto" else None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected auto, torch or a positive integer, got {text!r}")


def _resume_command(args: argparse.Namespace, checkpoint: str) -> str:
    """The command that resumes a run interrupted with its state saved in ``checkpoint``."""
    from sampler.io.checkpoint import read_checkpoint

    spec = args.target
    if spec is None and args.resume:
        spec = read_checkpoint(args.resume).run.get("metadata", {}).get("target_spec")
    again = f"{spec} " if spec and spec.rpartition(":")[0].endswith(".py") else ""
    return f"sampler run {again}--resume {checkpoint}"


def _checked_out(out: str) -> Path:
    """``--out``, checked before any sampling: its folder is created and a file written there and removed."""
    if not out.strip():
        raise ConfigurationError("--out needs a file name, e.g. --out run.nc")
    path = Path(out)
    if path.is_dir():
        raise ConfigurationError(f"--out {out!r} is a directory; give a file name, e.g. {str(path / 'run.nc')!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{str(path)!r} is not writable")
    except OSError as exc:
        raise ConfigurationError(f"--out {out!r} cannot be written: {exc}") from None
    return path


def _save(result: sampler.Result, out: Path, width: int) -> int:
    """Save ``result`` to ``out``; if that fails, to a fallback file, saying where. Returns the exit status."""
    try:
        result.save(out)
        print(f"{'saved':<{width}}  {out}")
        return 0
    except (OSError, SamplerError) as exc:
        name = f"sampler-{_slug(result.target)}-{_slug(result.method)}-seed{result.seed}.nc"
        for folder in (Path.cwd(), Path(tempfile.gettempdir())):
            fallback = folder / name
            try:
                result.save(fallback)
            except (OSError, SamplerError):
                continue
            print(
                f"sampler: could not write {str(out)!r} ({exc}); saved the result to {str(fallback)!r}", file=sys.stderr
            )
            return 1
        print(
            f"sampler: could not write {str(out)!r} ({exc}), nor a fallback file; the result is lost", file=sys.stderr
        )
        return 1


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from sampler.analysis.plotting import resolve_target

    result = sampler.load(args.file)
    print(sampler.summary(result, target=resolve_target(result)))
    if args.steps:
        stats = result.stats
        keys = [k for k in ("t", "ess", "acceptance", "step_size") if k in stats]
        print("\nper step (mean over replicas):")
        print("  ".join(f"{k:>10}" for k in ["step", *keys]))
        for i, step in enumerate(stats.get("step", [])):
            row = [f"{int(step):>10d}"] + [f"{float(stats[k][i].double().nanmean()):>10.4g}" for k in keys]
            print("  ".join(row))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from sampler.analysis.plotting import plot, plot_all

    result = sampler.load(args.file)
    target = None
    if args.target is not None:
        target = load_target(args.target, _parse_options(args.target_option, "--target-option"), args.dim)
    names = _split(args.coords)
    coords = None if names is None else [int(c) if c.isdigit() else c for c in names]
    formats = _split(args.format) or ["png"]
    if args.kind:
        out = Path(args.out or Path(args.file).with_suffix("").name + f"-{args.kind}.{formats[0]}")
        plot(result, args.kind, target=target, coords=coords, out=out)
        paths = [out]
    else:
        out_dir = Path(args.out or Path(args.file).with_suffix("").name + "-plots")
        paths = plot_all(result, out_dir, target=target, formats=formats, coords=coords)
    for p in paths:
        print(p)
    return 0


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


def _cmd_bench(args: argparse.Namespace) -> int:
    from sampler.core.allocator import tune_cpu_allocator

    tune_cpu_allocator()  # as for `sampler run`: the benchmarks measure what the command line gives
    try:
        from sampler_benchmarks import DEFAULT_TARGETS, run_suite
    except ImportError as exc:  # pragma: no cover - only without the benchmarks package
        raise ConfigurationError(f"the benchmark harness (sampler_benchmarks) is not installed: {exc}") from None
    if args.seeds is not None and args.seeds < 1:
        raise ConfigurationError(f"--seeds must be a positive integer, got {args.seeds}")
    if args.cases is not None and args.suite != "throughput":
        raise ConfigurationError("--cases applies to --suite throughput")
    if args.suite == "posteriors":
        return _bench_posteriors(args)
    if args.suite == "throughput":
        return _bench_throughput(args)
    if args.particles is not None or args.replicas is not None:
        raise ConfigurationError(
            "--particles and --replicas apply to --suite posteriors (the synthetic suite: --budget)"
        )
    methods = _split(args.methods) or [m for m in ("smc", "ais", "mala", "hmc") if m in sampler.list_methods()]
    targets = _split(args.targets) or list(DEFAULT_TARGETS)
    command = "sampler " + " ".join(args.argv)
    report = run_suite(
        methods,
        targets,
        seeds=args.seeds,
        budget=args.budget,
        options=_parse_options(args.option, "--option"),
        device=args.device,
        progress=None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)),
        command=command.strip(),
    )
    out = report.write(args.out or "results/bench", plots=not args.no_plots)
    print(report.markdown())
    print(f"written: {out / 'results.json'}, {out / 'results.md'}" + ("" if args.no_plots else f", {out / 'plots'}/"))
    return 0


def _bench_posteriors(args: argparse.Namespace) -> int:
    """``sampler bench --suite posteriors``: methods on posteriordb's posteriors, scored against reference draws."""
    from sampler_benchmarks.posteriors import run_posterior_suite

    for flag, value in (("--particles", args.particles), ("--replicas", args.replicas)):
        if value is not None and value < 1:
            raise ConfigurationError(f"{flag} must be a positive integer, got {value}")
    methods = _split(args.methods) or [m for m in ("smc", "hmc") if m in sampler.list_methods()]
    command = "sampler " + " ".join(args.argv)
    report = run_posterior_suite(
        methods,
        _split(args.targets),
        seeds=3 if args.seeds is None else args.seeds,
        n_particles=args.particles or 1000,
        n_replicas=args.replicas or 4,
        options=_parse_options(args.option, "--option"),
        device=args.device,
        progress=None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)),
        command=command.strip(),
    )
    out = report.write(args.out or "results/posteriors")
    print(report.markdown())
    print(f"written: {out / 'results.json'}, {out / 'results.md'}")
    return 0


def _bench_throughput(args: argparse.Namespace) -> int:
    """``sampler bench --suite throughput``: gradients per second, ours beside BlackJAX's when installed."""
    from sampler_benchmarks import throughput

    if args.particles is not None or args.replicas is not None or args.methods or args.targets:
        raise ConfigurationError(
            "--suite throughput takes --cases, --seeds (repeats), -o compile=true, --out and --quiet"
        )
    options = _parse_options(args.option, "--option")
    if set(options) - {"compile"}:
        raise ConfigurationError(f"--suite throughput takes one option, compile=true|false; got {sorted(options)}")
    rows = throughput.run_throughput(
        _split(args.cases) or list(throughput.CASES),
        repeats=3 if args.seeds is None else args.seeds,
        compile=bool(options.get("compile", False)),
        progress=None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)),
    )
    print(f"{throughput.machine()}\n\n{throughput.markdown(rows)}")
    out = throughput.write(rows, args.out or "results/throughput")
    print(f"written: {out / 'results.json'}, {out / 'results.md'}")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    plugins = sampler.list_plugins()
    for p in plugins:
        origin = p.distribution or "-"
        if p.version:
            origin += f" {p.version}"
        status = "blocked" if p.blocked else ("FAILED" if p.error else "ok")
        print(f"{p.name}  [{status}]  {p.source}, {origin}")
        for kind, names in sorted(p.registered.items()):
            print(f"    {kind}s: {', '.join(names)}")
        if p.error:
            print(f"    error: {p.error}")
    failed = [p.name for p in plugins if p.error]
    if failed:
        print(f"\n{len(failed)} plugin(s) failed to load: {', '.join(failed)} (the others work)")
    return 0


def _cmd_list(*kinds: str) -> int:
    for kind in kinds:
        if len(kinds) > 1:
            print(f"{kind}s:")
        for entry in sampler.host.loading.host().registry.entries(kind):
            print(f"  {entry.name:<20} {entry.description}  [plugin {entry.plugin}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sampler`` command."""
    parser = argparse.ArgumentParser(
        prog="sampler",
        description="Sample unnormalized Boltzmann densities and estimate log Z.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sampler-engine {sampler.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log informational and debug messages")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser(
        "run",
        help="sample a target and print the summary",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "target", nargs="?", default=None, help=f"built-in name or path/to/file.py:Name (default {DEFAULT_TARGET})"
    )
    run.add_argument(
        "--method",
        "-m",
        default=DEFAULT_METHOD,
        help=f"sampling method (default {DEFAULT_METHOD}; see `sampler methods`)",
    )
    run.add_argument(
        "--particles", "-n", type=int, default=2000, help="particles per replica, or draws per chain (default 2000)"
    )
    run.add_argument("--replicas", "-r", type=int, default=4, help="independent replicas or chains (default 4)")
    run.add_argument("--seed", "-s", type=int, default=None, help="random seed (default: random, printed)")
    run.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: torch's default)")
    run.add_argument("--dtype", default=None, help="float32 or float64 (default: torch's default)")
    run.add_argument(
        "--threads",
        type=_threads,
        default="auto",
        help="CPU threads: auto (one for tiny runs, else the cores other processes leave idle), torch or a number",
    )
    run.add_argument(
        "--option", "-o", action="append", metavar="KEY=VALUE", help="method option, e.g. -o n_steps=20 (repeatable)"
    )
    run.add_argument(
        "--target-option", action="append", metavar="KEY=VALUE", help="option for a named target, e.g. dim=10"
    )
    run.add_argument("--dim", type=int, default=None, help="wrap file.py:function as an energy U(x) in this dimension")
    run.add_argument(
        "--out", default=None, metavar="FILE.nc", help="save the result as ArviZ NetCDF (sampler.load reads it)"
    )
    run.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="checkpoint file (default on Ctrl-C: TARGET-METHOD-seedS.ckpt)",
    )
    run.add_argument(
        "--checkpoint-every", type=int, default=None, metavar="K", help="write the checkpoint every K annealing stages"
    )
    run.add_argument("--resume", default=None, metavar="FILE", help="continue the run saved in this checkpoint")
    run.add_argument(
        "--distributed",
        action="store_true",
        help="per-particle random streams, as under torchrun: the same result for 1 or K processes",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    run.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    run.set_defaults(func=_cmd_run)

    bench = sub.add_parser(
        "bench",
        help="benchmark methods on targets with exact ground truth",
        epilog="examples:\n  sampler bench --methods smc --targets gmm40,funnel --seeds 3\n"
        "  sampler bench --budget paper --device cuda --out results/paper\n"
        "  sampler bench --suite posteriors --methods smc,hmc --targets arK-arK,garch-garch11\n"
        "  sampler bench --suite throughput --cases smc,chains --seeds 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument(
        "--suite",
        choices=("synthetic", "posteriors", "throughput"),
        default="synthetic",
        help="synthetic: targets with exact samplers (docs/benchmarks.md, the default); "
        "posteriors: posteriordb posteriors against reference draws (docs/posteriors.md); "
        "throughput: gradients per second beside BlackJAX (docs/benchmarks.md, Throughput)",
    )
    bench.add_argument(
        "--cases", default=None, help="--suite throughput: comma-separated smc, chains, sweep (default: all)"
    )
    bench.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods (default: smc, ais, mala, hmc; with --suite posteriors: smc, hmc)",
    )
    bench.add_argument(
        "--targets",
        default=None,
        help="comma-separated targets (default: the suite of docs/benchmarks.md); "
        "with --suite posteriors: posteriordb names (default: all)",
    )
    bench.add_argument(
        "--seeds", type=int, default=None, help="number of seeds (default: the budget's; --suite posteriors: 3)"
    )
    bench.add_argument(
        "--budget",
        default="cpu",
        help="synthetic suite: cpu (2 CPU cores), paper (published scale, for a GPU) or smoke (seconds)",
    )
    bench.add_argument(
        "--particles", "-n", type=int, default=None, help="--suite posteriors: particles per replica (default 1000)"
    )
    bench.add_argument("--replicas", "-r", type=int, default=None, help="--suite posteriors: replicas (default 4)")
    bench.add_argument("--option", "-o", action="append", metavar="KEY=VALUE", help="option for every method")
    bench.add_argument("--device", default=None, help="torch device (default cpu)")
    bench.add_argument(
        "--out", default=None, help="output folder (default results/bench; --suite posteriors: results/posteriors)"
    )
    bench.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    bench.add_argument("--quiet", "-q", action="store_true", help="no per-run progress lines")
    bench.set_defaults(func=_cmd_bench)

    diagnose = sub.add_parser(
        "diagnose",
        help="print the diagnostics of a saved result",
        epilog="examples:\n  sampler diagnose result.nc\n  sampler diagnose result.nc --steps",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    diagnose.add_argument("file", help="a result saved with --out or Result.save")
    diagnose.add_argument("--steps", action="store_true", help="also print t, ESS and acceptance per step")
    diagnose.set_defaults(func=_cmd_diagnose)

    plot = sub.add_parser(
        "plot",
        help="draw the plots of a saved result",
        epilog="examples:\n  sampler plot result.nc                      # every plot that applies, in result-plots/\n"
        "  sampler plot result.nc --kind schedule --out schedule.svg\n"
        "  sampler plot result.nc --format png,svg --coords 0,3 --out figures/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot.add_argument("file", help="a result saved with --out or Result.save")
    plot.add_argument(
        "--kind", default=None, help="one plot: samples, pair, marginals, trace, schedule, log_Z, weights"
    )
    plot.add_argument(
        "--out", default=None, help="output file (with --kind) or folder (default next to the working directory)"
    )
    plot.add_argument("--format", default="png", help="comma-separated file formats: png, svg (default png)")
    plot.add_argument("--coords", default=None, help="comma-separated coordinates for pair/marginal plots")
    plot.add_argument(
        "--target", default=None, help="target for density contours if not built-in (name or file.py:Name)"
    )
    plot.add_argument("--target-option", action="append", metavar="KEY=VALUE", help="option for a named target")
    plot.add_argument("--dim", type=int, default=None, help="with --target file.py:function: energy in this dimension")
    plot.set_defaults(func=_cmd_plot)

    plugins = sub.add_parser(
        "plugins",
        help="list plugins, what they registered, and load failures",
        epilog="example:\n  sampler plugins",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plugins.set_defaults(func=_cmd_plugins)
    targets = sub.add_parser(
        "targets",
        help="list registered targets",
        epilog="example:\n  sampler targets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    targets.set_defaults(func=lambda a: _cmd_list("target"))
    methods = sub.add_parser(
        "methods",
        help="list registered methods and correctors",
        epilog="example:\n  sampler methods",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    methods.set_defaults(func=lambda a: _cmd_list("method", "corrector", "transport"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sampler`` console script; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except SamplerError as exc:
        from sampler.engine import distributed

        where = f" (rank {distributed.rank()} of {distributed.world_size()})" if distributed.world_size() > 1 else ""
        print(f"sampler: error{where}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sampler: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
