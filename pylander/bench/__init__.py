"""``python -m pylander.bench``: the native ops and the trainer against their baselines.

Every comparison runs in one process, interleaved and after warm-up, and is reported as a
ratio; absolute times are printed too, but on a shared machine they move with the load.

Sections (``--only`` picks some; ``--profile`` adds the last one), one module each:

* ``ops`` (:mod:`.ops`): ``discounted_returns``, ``sample_categorical`` and ``pg_loss`` forward
  + backward against the notebook's Python loop and the best pure-PyTorch versions, at several
  sizes, timed with ``torch.utils.benchmark.Timer`` in interleaved rounds (:mod:`.timing`);
* ``trainer`` (:mod:`.trainer`): env steps/s of the default trainer (``pylander.trainer.train``,
  everything it does per update included) against stepping the same vector env configuration
  with random actions and no learner, one block of ``num_envs x num_steps`` steps run by a
  training hook between every two updates;
* ``notebook`` (:mod:`.notebook`; ``seed`` is its old name): the notebook's own loop
  (``pylander.reference``), one episode between every two ``--algo notebook`` updates;
* ``distributed`` (:mod:`.distributed`): ``python -m pylander.train --procs 1`` against
  ``--procs 2`` (subprocesses, alternating, each timed from its ``metrics.csv``);
* ``profile`` (:mod:`.profiling`): where one training update's time goes (cProfile by function,
  torch.profiler by op).

``--quick`` shrinks every section (CI smoke use, well under a minute); ``--json FILE`` writes the
same numbers as JSON (:mod:`.report` prints them); ``--device cuda`` runs the ops (every
candidate on the GPU, at larger sizes too) and the trainer's policy on the GPU, while the
notebook and distributed sections stay on the CPU. Run it from outside the source checkout,
like the tests.
"""

from __future__ import annotations

from pylander.bench.report import TARGETS, check_targets, format_report, lookup
from pylander.bench.runner import DEFAULT_SECTIONS, SECTIONS, main, run_benchmarks
from pylander.bench.settings import Settings

__all__ = [
    "DEFAULT_SECTIONS",
    "SECTIONS",
    "TARGETS",
    "Settings",
    "check_targets",
    "format_report",
    "lookup",
    "main",
    "run_benchmarks",
]
