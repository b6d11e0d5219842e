"""pinlab_tasks: the `pinlab` CLI and the workflows behind it."""

import os

# Before torch loads OpenMP: idle OpenMP threads otherwise spin, and on a busy 2-core machine
# the spinning thread starves the working one (a BPR epoch went from 0.2 s to 45 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Ray (`pinlab embed --engine ray`) reads these when it is imported, perhaps before pinlab asks
# for it: report no usage over the network, and under `uv run` do not ship the working
# directory to each worker and start it through `uv run` again (a fresh environment, minutes;
# workers run this interpreter, where pinlab is installed).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
