"""The lazy top-level package: ``import sampler`` and ``sampler --help`` load no torch, the API loads whole.

Each check runs in a fresh interpreter, where nothing is imported yet. Start-up time itself is
measured in docs/benchmarks.md, never asserted here.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys

import pytest

import sampler


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_import_and_the_cli_parser_load_no_torch():
    _python(
        "import sys, sampler, sampler.cli\n"
        "help = sampler.cli.build_parser().format_help()\n"
        "assert 'run' in help and sampler.__version__\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )


def test_sampler_help_answers_without_torch():
    out = _python(
        "import sys\n"
        "from sampler.cli import main\n"
        "try:\n"
        "    main(['run', '--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    assert "--particles" in out.stdout


def test_the_first_name_used_loads_the_whole_api_and_results_can_be_saved():
    _python(
        "import sampler\n"
        "sampler.DEFAULT_METHOD\n"
        "missing = [n for n in sampler.__all__ if n not in vars(sampler)]\n"
        "assert not missing, missing\n"
        "from sampler.core.result import _PROVIDERS\n"
        "assert set(_PROVIDERS) == {'to_arviz', 'save', 'plot'}, _PROVIDERS\n"
    )
    _python(  # without the top-level names: sampler.api registers the providers itself
        "from sampler.api import sample\n"
        "from sampler.core.result import _PROVIDERS\n"
        "assert set(_PROVIDERS) == {'to_arviz', 'save', 'plot'}, _PROVIDERS\n"
    )


@pytest.mark.parametrize(
    "alias, module",
    [
        ("schedules", "sampler.core.schedules"),
        ("paths", "sampler.core.paths"),
        ("resampling", "sampler.core.resampling"),
        ("diagnostics", "sampler.analysis.diagnostics"),
        ("metrics", "sampler.analysis.metrics"),
        ("plotting", "sampler.analysis.plotting"),
        ("distributed", "sampler.engine.distributed"),
        ("plugins", "sampler.host.loading"),
        ("hookspecs", "sampler.host.hookspecs"),
    ],
)
def test_short_module_names_import_as_the_modules_themselves(alias, module):
    _python(
        "import importlib, sampler\n"
        f"short = importlib.import_module('sampler.{alias}')\n"
        f"real = importlib.import_module('{module}')\n"
        f"assert short is real and getattr(sampler, '{alias}') is real\n"
        f"assert real.__spec__.name == '{module}', real.__spec__\n"
        "importlib.reload(real)\n"
    )


def test_unknown_names_are_attribute_errors_and_dir_lists_the_api():
    with pytest.raises(AttributeError, match="no attribute 'sampel'"):
        sampler.sampel  # noqa: B018
    assert set(sampler.__all__) <= set(dir(sampler))
    from sampler.schedules import Adaptive

    assert Adaptive is sampler.core.schedules.Adaptive


def test_the_lazy_table_the_static_imports_and_all_name_the_same_api():
    """``_EXPORTS`` (what runs), the ``TYPE_CHECKING`` imports (what mypy and the docs see) and ``__all__`` agree."""
    static = set()
    for node in ast.walk(ast.parse(inspect.getsource(sampler))):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            static |= {alias.asname or alias.name for imp in node.body for alias in imp.names}  # type: ignore[attr-defined]
    assert static == set(sampler._EXPORTS)
    assert set(sampler.__all__) == set(sampler._EXPORTS) - {"plotting"} | {
        "__version__"
    }  # plotting: by its module name
