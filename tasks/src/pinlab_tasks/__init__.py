"""pinlab_tasks: the `pinlab` CLI and the workflows behind it."""

import os

# Before torch loads OpenMP: idle OpenMP threads otherwise spin, and on a busy 2-core machine
# the spinning thread starves the working one (a BPR epoch went from 0.2 s to 45 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
