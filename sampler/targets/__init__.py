"""Targets: the base classes (:mod:`sampler.targets.base`) and built-in targets.

Built-in targets have exact samplers and exact log normalizers.

Get them by name with :func:`sampler.get_target` (``sampler targets`` lists them):

* ``gaussian`` -- :class:`Gaussian`, any dimension, for tests;
* ``double-well`` -- :class:`DoubleWell`, the 2D double well of the stochastic-normalizing-flow paper;
* ``gmm40`` -- :class:`GMM40`, 40 equal-weight Gaussians on [-40, 40]^2 (FAB convention).
"""

from sampler.targets.base import BoltzmannTarget, FunctionTarget, Target, target
from sampler.targets.double_well import DoubleWell
from sampler.targets.gaussian import Gaussian
from sampler.targets.gmm import GMM40, GaussianMixture

__all__ = ["Target", "BoltzmannTarget", "FunctionTarget", "target", "Gaussian", "DoubleWell", "GaussianMixture", "GMM40"]
