"""Shared fixtures: every test starts from the default plugin set and leaves it that way."""

from __future__ import annotations

import pytest

import sampler


@pytest.fixture
def fresh_plugins():
    """Reload plugins from scratch before and after a test that registers or blocks plugins."""
    sampler.reset_plugins()
    yield sampler.plugins.host()
    sampler.reset_plugins()
