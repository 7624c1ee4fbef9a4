"""The plugin layer: run-time plugins, entry points (real, fake and broken), strict mode,
autoload/blocking switches, malformed plugins and name clashes.

Every test that changes the plugin set uses ``fresh_plugins`` so the process-wide host is
rebuilt from the installed entry points afterwards.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import sys
import textwrap
import types

import pytest
import torch

import sampler
from sampler.errors import (
    ConfigurationError,
    DuplicateNameError,
    PluginError,
    PluginLoadError,
    SamplerError,
    UnknownNameError,
)
from sampler.schedules import Linear


def _plugins() -> dict[str, sampler.plugins.PluginInfo]:
    return {p.name: p for p in sampler.list_plugins()}


def _small_gaussian():
    return sampler.get_target("gaussian", dim=2)


# ------------------------------------------------------------------------------------------------
# A complete run-time plugin: a corrector, a transport and a method built from them.
# ------------------------------------------------------------------------------------------------


class NoopCorrector(sampler.Corrector):
    """Leaves particles where they are and reports a marker statistic."""

    def __init__(self, marker: float = 1.0):
        self.marker = float(marker)

    def apply(self, particles, state, ctx):
        mark = torch.full((particles.n_replicas,), self.marker, dtype=torch.float64, device=particles.x.device)
        return sampler.StepOutput(particles, state, {"noop_marker": mark})


class IdentityTransport(sampler.Transport):
    """Does not move particles (log-weight increment zero)."""

    def apply(self, particles, state, ctx):
        return sampler.StepOutput(particles, state, {}, torch.zeros_like(particles.log_weights))


def build_tiny_method(n_stages: int = 10, marker: float = 1.0):
    """Tempering with the plugin's own transport and corrector plus RWMH moves."""
    return sampler.Pipeline(
        schedule=Linear(n_stages),
        steps=[
            sampler.transport("tiny_identity"),
            sampler.corrector("resample"),
            sampler.corrector("rwmh", n_steps=2),
            sampler.corrector("tiny_noop", marker=marker),
        ],
        name="tiny_method",
    )


class TinyPlugin:
    name = "tiny"

    @sampler.hookimpl
    def sampler_register(self, registry):
        registry.add_corrector("tiny_noop", NoopCorrector)
        registry.add_transport("tiny_identity", IdentityTransport)
        registry.add_method("tiny_method", build_tiny_method)


def _module_plugin(module_name: str = "tiny_module_plugin") -> types.ModuleType:
    mod = types.ModuleType(module_name)

    @sampler.hookimpl
    def sampler_register(registry):
        registry.add_target("tiny_target", lambda dim=3: sampler.get_target("gaussian", dim=dim))

    mod.sampler_register = sampler_register
    return mod


def test_runtime_plugin_components_usable_by_name(fresh_plugins):
    assert sampler.register_plugin(TinyPlugin()) == "tiny"  # name from the object's ``name``

    assert "tiny_method" in sampler.list_methods()
    assert "tiny_noop" in sampler.list_correctors()
    assert "tiny_identity" in sampler.list_transports()
    assert isinstance(sampler.corrector("tiny_noop", marker=2.0), NoopCorrector)
    assert isinstance(sampler.transport("tiny_identity"), IdentityTransport)

    res = sampler.sample(_small_gaussian(), method="tiny_method", n_particles=200, n_replicas=2, seed=0, marker=3.0)
    assert res.method == "tiny_method"
    assert res.samples.shape == (2, 200, 2)
    assert torch.all(res.stats["noop_marker"] == 3.0)
    assert len(res.steps) == 10

    info = _plugins()["tiny"]
    assert info.source == "runtime"
    assert info.ok
    assert info.error is None
    assert info.registered == {"corrector": ["tiny_noop"], "transport": ["tiny_identity"], "method": ["tiny_method"]}


def test_runtime_module_plugin_named_after_module(fresh_plugins):
    name = sampler.register_plugin(_module_plugin())
    assert name == "tiny_module_plugin"
    assert "tiny_target" in sampler.list_targets()
    assert sampler.get_target("tiny_target", dim=4).dim == 4
    assert _plugins()[name].registered == {"target": ["tiny_target"]}


def test_unregister_removes_everything_the_plugin_added(fresh_plugins):
    before = {k: getattr(sampler, f"list_{k}")() for k in ("methods", "correctors", "transports", "targets")}
    sampler.register_plugin(TinyPlugin())
    sampler.register_plugin(_module_plugin())
    sampler.unregister_plugin("tiny")
    sampler.unregister_plugin("tiny_module_plugin")

    after = {k: getattr(sampler, f"list_{k}")() for k in ("methods", "correctors", "transports", "targets")}
    assert after == before
    assert "tiny" not in _plugins() and "tiny_module_plugin" not in _plugins()
    assert sampler.plugins.host().pm.get_plugin("tiny") is None
    with pytest.raises(UnknownNameError):
        sampler.corrector("tiny_noop")
    with pytest.raises(UnknownNameError):
        sampler.sample(_small_gaussian(), method="tiny_method", n_particles=10, n_replicas=1, seed=0)
    # Same name can be used again after unregistering.
    assert sampler.register_plugin(TinyPlugin()) == "tiny"
    assert "tiny_method" in sampler.list_methods()


def test_unregister_unknown_plugin_suggests_names(fresh_plugins):
    with pytest.raises(UnknownNameError, match="mcmc"):
        sampler.unregister_plugin("mcmx")


def test_explicit_name_overrides_object_name(fresh_plugins):
    assert sampler.register_plugin(TinyPlugin(), name="renamed") == "renamed"
    assert _plugins()["renamed"].registered["method"] == ["tiny_method"]
    assert "tiny" not in _plugins()


# ------------------------------------------------------------------------------------------------
# Built-in plugin through the entry-point group
# ------------------------------------------------------------------------------------------------


def test_builtin_mcmc_plugin_comes_from_entry_point(fresh_plugins):
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=sampler.hookspecs.ENTRY_POINT_GROUP)}
    assert sampler.hookspecs.ENTRY_POINT_GROUP == "sampler"
    assert eps["mcmc"].value == "sampler_plugins.mcmc"

    info = _plugins()["mcmc"]
    assert info.source == "entry point"
    assert info.distribution == "sampler-engine"
    assert info.version == importlib.metadata.version("sampler-engine")
    assert info.ok
    assert set(info.registered["method"]) == {"smc", "ais", "mala", "hmc"}
    assert set(info.registered["corrector"]) == {"ula", "mala", "hmc", "rwmh", "imh", "resample", "waste-free"}

    import sampler_plugins.mcmc

    assert fresh_plugins.pm.get_plugin("mcmc") is sampler_plugins.mcmc
    core = _plugins()["core"]
    assert core.source == "core"
    assert set(core.registered["target"]) >= {"gaussian", "double-well", "gmm40"}


# ------------------------------------------------------------------------------------------------
# Fake installed distributions (real dist-info folders on sys.path)
# ------------------------------------------------------------------------------------------------

BROKEN_SRC = """
raise RuntimeError("fake_broken_module exploded on import")
"""

RAISER_SRC = """
import sampler
from sampler_plugins.mcmc import RWMH


@sampler.hookimpl
def sampler_register(registry):
    registry.add_corrector("half_done_corrector", RWMH)
    registry.add_method("half_done_method", lambda **kw: None)
    raise RuntimeError("fake_raiser_module failed half-way")
"""

DUPLICATE_SRC = """
import sampler
from sampler_plugins.mcmc import RWMH


@sampler.hookimpl
def sampler_register(registry):
    registry.add_corrector("dup_fresh_corrector", RWMH)
    registry.add_corrector("rwmh", RWMH)
"""

GOOD_SRC = """
import sampler
from sampler_plugins.mcmc import RWMH


@sampler.hookimpl
def sampler_register(registry):
    registry.add_corrector("fake_good_corrector", RWMH)
"""


class FakeSite:
    """Writes modules and ``*.dist-info`` folders into a directory put on ``sys.path``."""

    def __init__(self, root, monkeypatch):
        self.root = root
        self.monkeypatch = monkeypatch
        self.modules: list[str] = []
        self.active = False

    def add_dist(self, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        for mod, src in modules.items():
            (self.root / f"{mod}.py").write_text(textwrap.dedent(src))
            self.modules.append(mod)
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[sampler]\n{lines}")

    def activate(self) -> None:
        importlib.invalidate_caches()
        self.monkeypatch.syspath_prepend(str(self.root))
        self.active = True

    def cleanup(self) -> None:
        for mod in self.modules:
            sys.modules.pop(mod, None)


@pytest.fixture
def fake_site(fresh_plugins, monkeypatch, tmp_path):
    """A sys.path entry for fake distributions. Set up after ``fresh_plugins`` so that sys.path
    and the environment are restored before ``fresh_plugins`` reloads the real plugin set."""
    site = FakeSite(tmp_path, monkeypatch)
    yield site
    site.cleanup()


def _broken_dist(site: FakeSite) -> None:
    site.add_dist("fake-dist", "1.0", {"broken": "fake_broken_module"}, {"fake_broken_module": BROKEN_SRC})


def _all_fake_dists(site: FakeSite) -> None:
    _broken_dist(site)
    site.add_dist("fake-raiser", "2.3", {"raiser": "fake_raiser_module"}, {"fake_raiser_module": RAISER_SRC})
    site.add_dist("fake-dup", "0.5", {"zz_dup": "fake_dup_module"}, {"fake_dup_module": DUPLICATE_SRC})
    site.add_dist("fake-good", "4.0", {"good": "fake_good_module"}, {"fake_good_module": GOOD_SRC})


def test_fake_distributions_are_discovered(fake_site):
    _all_fake_dists(fake_site)
    fake_site.activate()
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="sampler")}
    assert {"broken", "raiser", "zz_dup", "good", "mcmc"} <= set(eps)
    assert eps["broken"].dist.name == "fake-dist"
    assert eps["broken"].dist.version == "1.0"


def test_import_failure_is_reported_and_rest_keep_working(fake_site, caplog):
    _all_fake_dists(fake_site)
    fake_site.activate()
    with caplog.at_level(logging.WARNING, logger="sampler.plugins"):
        sampler.reset_plugins()

    info = _plugins()["broken"]
    assert info.source == "entry point"
    assert info.distribution == "fake-dist"
    assert info.version == "1.0"
    assert not info.ok
    assert "fake_broken_module exploded on import" in info.error
    assert "RuntimeError" in info.error
    assert info.registered == {}
    assert info in sampler.plugins.host().failures
    assert info not in sampler.list_plugins(include_failed=False)
    assert any("broken" in r.getMessage() and "fake-dist" in r.getMessage() for r in caplog.records)

    # A good third-party plugin and the built-ins still load and work.
    assert _plugins()["good"].ok
    assert _plugins()["good"].distribution == "fake-good"
    assert "fake_good_corrector" in sampler.list_correctors()
    assert _plugins()["mcmc"].ok
    res = sampler.sample(_small_gaussian(), method="smc", n_particles=100, n_replicas=2, seed=0, n_steps=2)
    assert res.log_Z is not None and torch.isfinite(res.log_Z_per_replica).all()
    res = sampler.sample(_small_gaussian(), method="mala", n_particles=20, n_replicas=2, seed=0, n_warmup=10)
    assert res.samples.shape == (2, 20, 2)


def test_raise_in_sampler_register_is_reported_and_nothing_kept(fake_site):
    _all_fake_dists(fake_site)
    fake_site.activate()
    host = sampler.reset_plugins()

    info = _plugins()["raiser"]
    assert info.distribution == "fake-raiser" and info.version == "2.3"
    assert not info.ok
    assert "fake_raiser_module failed half-way" in info.error
    assert "sampler_register" in info.error
    assert info.registered == {}
    assert "half_done_corrector" not in sampler.list_correctors()
    assert "half_done_method" not in sampler.list_methods()
    assert host.pm.get_plugin("raiser") is None
    with pytest.raises(UnknownNameError):
        sampler.corrector("half_done_corrector")
    assert "smc" in sampler.list_methods()


def test_duplicate_name_from_entry_point_is_reported(fake_site):
    _all_fake_dists(fake_site)
    fake_site.activate()
    host = sampler.reset_plugins()

    info = _plugins()["zz_dup"]
    assert not info.ok
    assert info.distribution == "fake-dup"
    assert "rwmh" in info.error and "mcmc" in info.error and "already registered" in info.error
    # Nothing of the failed plugin is kept, and the first owner keeps the name.
    assert "dup_fresh_corrector" not in sampler.list_correctors()
    assert host.registry.get("corrector", "rwmh").plugin == "mcmc"
    assert host.pm.get_plugin("zz_dup") is None


def test_strict_mode_argument_raises_plugin_load_error(fake_site):
    _broken_dist(fake_site)
    fake_site.activate()
    with pytest.raises(PluginLoadError, match="broken") as err:
        sampler.reset_plugins(strict=True)
    assert "fake-dist" in str(err.value)
    assert "exploded on import" in str(err.value)
    assert isinstance(err.value, PluginError) and isinstance(err.value, SamplerError)


def test_strict_mode_env_var_raises_plugin_load_error(fake_site, monkeypatch):
    _broken_dist(fake_site)
    fake_site.activate()
    monkeypatch.setenv("SAMPLER_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="'broken'"):
        sampler.reset_plugins()


def test_strict_mode_raises_for_failure_inside_register(fake_site):
    fake_site.add_dist("fake-raiser", "2.3", {"raiser": "fake_raiser_module"}, {"fake_raiser_module": RAISER_SRC})
    fake_site.activate()
    sampler.set_strict_plugins(True)
    with pytest.raises(PluginLoadError, match="'raiser'.*fake-raiser 2.3"):
        sampler.reset_plugins(strict=True)


def test_strict_mode_without_failures_loads_normally(fresh_plugins, monkeypatch):
    monkeypatch.setenv("SAMPLER_STRICT_PLUGINS", "1")
    host = sampler.reset_plugins()
    assert host.strict
    assert "smc" in sampler.list_methods()
    assert not host.failures


def test_non_strict_env_values_are_not_strict(fake_site, monkeypatch):
    _broken_dist(fake_site)
    fake_site.activate()
    monkeypatch.setenv("SAMPLER_STRICT_PLUGINS", "0")
    host = sampler.reset_plugins()
    assert not host.strict
    assert _plugins()["broken"].error is not None


# ------------------------------------------------------------------------------------------------
# Autoload and blocking
# ------------------------------------------------------------------------------------------------


def test_disable_autoload_env_var_loads_no_entry_points(fake_site, monkeypatch):
    # With autoload off, even a broken plugin in strict mode is never imported.
    _broken_dist(fake_site)
    fake_site.activate()
    monkeypatch.setenv("SAMPLER_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("SAMPLER_STRICT_PLUGINS", "1")
    sampler.reset_plugins()

    assert "smc" not in sampler.list_methods()
    assert sampler.list_methods() == []
    assert sampler.list_correctors() == []
    assert set(sampler.list_targets()) >= {"gaussian", "double-well", "gmm40"}
    assert set(_plugins()) == {"core"}
    assert "fake_broken_module" not in sys.modules
    with pytest.raises(UnknownNameError, match="smc"):
        sampler.sample(_small_gaussian(), method="smc", n_particles=10, n_replicas=1, seed=0)
    # Run-time registration still works.
    sampler.register_plugin(_module_plugin())
    assert "tiny_target" in sampler.list_targets()


def test_disable_autoload_argument(fresh_plugins):
    sampler.reset_plugins(autoload=False)
    assert sampler.list_methods() == []
    assert "gaussian" in sampler.list_targets()


def test_block_env_var_skips_plugin(fresh_plugins, monkeypatch):
    monkeypatch.setenv("SAMPLER_BLOCK_PLUGINS", " mcmc , something_else")
    sampler.reset_plugins()
    info = _plugins()["mcmc"]
    assert info.blocked and not info.ok
    assert info.error is None
    assert info.distribution == "sampler-engine"
    assert info.registered == {}
    assert "smc" not in sampler.list_methods()
    assert "mala" not in sampler.list_correctors()
    assert "mcmc" not in {p.name for p in sampler.list_plugins(include_failed=False)}
    assert "gaussian" in sampler.list_targets()


def test_block_env_var_prevents_import_of_broken_plugin(fake_site, monkeypatch):
    _broken_dist(fake_site)
    fake_site.activate()
    monkeypatch.setenv("SAMPLER_BLOCK_PLUGINS", "broken")
    sampler.reset_plugins(strict=True)  # would raise if it were imported
    assert _plugins()["broken"].blocked
    assert _plugins()["broken"].error is None
    assert "smc" in sampler.list_methods()


def test_block_plugin_function_removes_loaded_plugin(fresh_plugins):
    assert "smc" in sampler.list_methods()
    sampler.block_plugin("mcmc")
    info = _plugins()["mcmc"]
    assert info.blocked and not info.ok
    assert not {"smc", "ais", "mala", "hmc"} & set(sampler.list_methods())
    assert "rwmh" not in sampler.list_correctors()
    assert sampler.plugins.host().pm.get_plugin("mcmc") is None
    with pytest.raises(UnknownNameError):
        sampler.sample(_small_gaussian(), method="smc", n_particles=10, n_replicas=1, seed=0)


def test_block_plugin_function_blocks_runtime_plugin(fresh_plugins):
    sampler.register_plugin(TinyPlugin())
    sampler.block_plugin("tiny")
    assert _plugins()["tiny"].blocked
    assert "tiny_method" not in sampler.list_methods()
    # A blocked name is skipped if registered again.
    sampler.register_plugin(TinyPlugin())
    assert "tiny_method" not in sampler.list_methods()


def test_block_plugin_before_host_exists_applies_on_load(fresh_plugins):
    sampler.plugins._HOST = None  # as in a fresh process: nothing loaded yet
    sampler.block_plugin("mcmc")
    assert _plugins()["mcmc"].blocked
    assert "smc" not in sampler.list_methods()


# ------------------------------------------------------------------------------------------------
# Malformed plugins and name clashes
# ------------------------------------------------------------------------------------------------


def _misspelled_module() -> types.ModuleType:
    mod = types.ModuleType("misspelled_plugin")

    @sampler.hookimpl
    def sampler_regster(registry):
        registry.add_corrector("never", NoopCorrector)

    mod.sampler_regster = sampler_regster
    return mod


class WrongArgument:
    @sampler.hookimpl
    def sampler_register(self, reg):
        reg.add_corrector("never", NoopCorrector)


class AddsTwice:
    @sampler.hookimpl
    def sampler_register(self, registry):
        registry.add_corrector("twice_corrector", NoopCorrector)
        registry.add_corrector("twice_corrector", NoopCorrector)


def _corrector_plugin(corrector_name: str):
    class P:
        @sampler.hookimpl
        def sampler_register(self, registry):
            registry.add_corrector(corrector_name, NoopCorrector)

    return P()


def test_misspelled_hook_raises_plugin_error(fresh_plugins):
    with pytest.raises(PluginError, match="sampler_regster"):
        sampler.register_plugin(_misspelled_module())
    assert "misspelled_plugin" not in _plugins()
    assert "never" not in sampler.list_correctors()
    assert fresh_plugins.pm.get_plugin("misspelled_plugin") is None
    # Other hooks keep working, and the name is free again.
    sampler.register_plugin(_corrector_plugin("ok_after_misspelling"), name="misspelled_plugin")
    assert "ok_after_misspelling" in sampler.list_correctors()


def test_wrong_argument_name_raises_plugin_error(fresh_plugins):
    with pytest.raises(PluginError, match="reg") as err:
        sampler.register_plugin(WrongArgument(), name="wrong_arg")
    assert "sampler_register" in str(err.value)
    assert "never" not in sampler.list_correctors()
    assert "wrong_arg" not in _plugins()


def test_name_free_again_after_wrong_argument_failure(fresh_plugins):
    """After a plugin is rejected for a bad hook signature, its name must not stay taken."""
    with pytest.raises(PluginError):
        sampler.register_plugin(WrongArgument(), name="wrong_arg")
    assert fresh_plugins.pm.get_plugin("wrong_arg") is None
    sampler.register_plugin(_corrector_plugin("fixed_corrector"), name="wrong_arg")
    assert "fixed_corrector" in sampler.list_correctors()


def test_same_plugin_name_twice_raises(fresh_plugins):
    sampler.register_plugin(TinyPlugin())
    with pytest.raises(PluginError, match="already registered"):
        sampler.register_plugin(_corrector_plugin("other_corrector"), name="tiny")
    assert "other_corrector" not in sampler.list_correctors()
    with pytest.raises(PluginError, match="already registered"):
        sampler.register_plugin(_corrector_plugin("x"), name="mcmc")


def test_same_plugin_object_twice_raises(fresh_plugins):
    plugin = TinyPlugin()
    sampler.register_plugin(plugin)
    with pytest.raises(PluginError):
        sampler.register_plugin(plugin, name="tiny_again")
    assert "tiny_again" not in _plugins()


def test_same_component_name_twice_in_one_plugin_raises(fresh_plugins):
    with pytest.raises(PluginError, match="twice"):
        sampler.register_plugin(AddsTwice(), name="adds_twice")
    assert "twice_corrector" not in sampler.list_correctors()
    assert "adds_twice" not in _plugins()


def test_duplicate_corrector_across_plugins_keeps_first_owner(fresh_plugins):
    sampler.register_plugin(_corrector_plugin("shared_corrector"), name="first_plugin")
    with pytest.raises(PluginError) as err:
        sampler.register_plugin(_corrector_plugin("shared_corrector"), name="second_plugin")
    msg = str(err.value)
    assert "first_plugin" in msg and "second_plugin" in msg and "shared_corrector" in msg
    assert fresh_plugins.registry.get("corrector", "shared_corrector").plugin == "first_plugin"
    assert "second_plugin" not in _plugins()
    assert fresh_plugins.pm.get_plugin("second_plugin") is None


def test_duplicate_corrector_across_plugins_raises_duplicate_name_error(fresh_plugins):
    """Two plugins registering the same corrector name: DuplicateNameError naming both."""
    sampler.register_plugin(_corrector_plugin("shared_corrector"), name="first_plugin")
    with pytest.raises(DuplicateNameError) as err:
        sampler.register_plugin(_corrector_plugin("shared_corrector"), name="second_plugin")
    assert "first_plugin" in str(err.value) and "second_plugin" in str(err.value)


def test_duplicate_with_builtin_corrector(fresh_plugins):
    with pytest.raises(PluginError, match="'mcmc'"):
        sampler.register_plugin(_corrector_plugin("mala"), name="clash")
    assert fresh_plugins.registry.get("corrector", "mala").plugin == "mcmc"


def test_registering_non_callable_factory_raises(fresh_plugins):
    class P:
        @sampler.hookimpl
        def sampler_register(self, registry):
            registry.add_corrector("not_callable", 42)

    with pytest.raises(PluginError, match="not_callable") as err:
        sampler.register_plugin(P(), name="bad_factory")
    assert isinstance(err.value.__cause__, ConfigurationError)
    assert "not_callable" not in sampler.list_correctors()


EXITING_SRC = """
import sys
sys.exit(3)
"""

INTERRUPTING_SRC = """
raise KeyboardInterrupt
"""

EXIT_IN_REGISTER_SRC = """
import sys
import sampler

@sampler.hookimpl
def sampler_register(registry):
    sys.exit(4)
"""


def test_a_plugin_that_exits_or_interrupts_is_contained(fake_site, capsys):
    """sys.exit or KeyboardInterrupt at import or in sampler_register is that plugin's failure: the
    others load, and every CLI command still runs (it used to end silently with rc 3 or 4)."""
    fake_site.add_dist("fake-exit", "1.0", {"exits": "fake_exit_module"}, {"fake_exit_module": EXITING_SRC})
    fake_site.add_dist("fake-int", "1.0", {"interrupts": "fake_int_module"}, {"fake_int_module": INTERRUPTING_SRC})
    fake_site.add_dist(
        "fake-reg", "1.0", {"exits_in_register": "fake_reg_module"}, {"fake_reg_module": EXIT_IN_REGISTER_SRC}
    )
    fake_site.activate()
    sampler.reset_plugins()
    plugins = _plugins()
    assert "sys.exit(3)" in plugins["exits"].error
    assert "KeyboardInterrupt" in plugins["interrupts"].error
    assert "sys.exit(4)" in plugins["exits_in_register"].error and plugins["exits_in_register"].registered == {}
    assert plugins["mcmc"].ok and "smc" in sampler.list_methods()
    from sampler.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "3 plugin(s) failed to load" in out and "exits" in out


def test_a_runtime_plugin_that_exits_in_register_raises_a_plugin_error(fresh_plugins):
    class Exiting:
        @sampler.hookimpl
        def sampler_register(self, registry):
            raise SystemExit(5)

    with pytest.raises(PluginError, match=r"sys.exit\(5\)"):
        sampler.register_plugin(Exiting(), name="exiting")
    assert "exiting" not in {p.name for p in sampler.list_plugins()}
