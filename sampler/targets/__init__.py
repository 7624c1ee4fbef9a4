"""Targets: the base classes (:mod:`sampler.targets.base`) and built-in targets.

Built-in targets have exact samplers and exact log normalizers (except ``lgcp``).

Get them by name with :func:`sampler.get_target` (``sampler targets`` lists them):

* ``gaussian`` -- :class:`Gaussian`, any dimension, for tests;
* ``double-well`` -- :class:`DoubleWell`, the 2D double well of the stochastic-normalizing-flow paper;
* ``gmm40`` -- :class:`GMM40`, 40 equal-weight Gaussians on [-40, 40]^2 (FAB convention);
* ``mustache`` -- :class:`Mustache`, a bent correlated Gaussian in 2D;
* ``8modes`` / ``8peaky`` -- :class:`EightModes` / :class:`EightPeaky`, 8 Gaussians on a shifted circle;
* ``funnel`` -- :class:`Funnel`, Neal's funnel in 10D;
* ``gmm10-{d}``, d in 10, 20, 50, 100, 200 -- :class:`GMM10`, 10 Gaussians in [-1, 1]^d;
* ``manywell`` -- :class:`ManyWell`, 16 independent double wells (d = 32);
* ``lgcp`` -- :class:`LGCP`, a log-Gaussian Cox process on a 40 x 40 grid (d = 1600; log Z unknown).
"""

from sampler.targets.base import BoltzmannTarget, FunctionTarget, Target, target
from sampler.targets.double_well import DoubleWell
from sampler.targets.funnel import Funnel
from sampler.targets.gaussian import Gaussian
from sampler.targets.gmm import GMM10, GMM10_DIMS, GMM40, EightModes, EightPeaky, GaussianMixture
from sampler.targets.lgcp import LGCP
from sampler.targets.manywell import ManyWell
from sampler.targets.model import Model, Param, ParameterLayout, model
from sampler.targets.mustache import Mustache

__all__ = [
    "Target",
    "BoltzmannTarget",
    "FunctionTarget",
    "target",
    "Model",
    "Param",
    "ParameterLayout",
    "model",
    "Gaussian",
    "DoubleWell",
    "GaussianMixture",
    "GMM40",
    "Mustache",
    "EightModes",
    "EightPeaky",
    "Funnel",
    "GMM10",
    "GMM10_DIMS",
    "ManyWell",
    "LGCP",
]
