"""``python -m sampler`` is the ``sampler`` command."""

import sys

from sampler.cli import main

sys.exit(main())
