"""Entry point of ``python -m pylander.bench`` (see :mod:`pylander.bench`)."""

import sys

from pylander.bench.runner import main

sys.exit(main())
