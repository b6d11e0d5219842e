"""pinlab_tasks: the `pinlab` CLI and the workflows behind it."""

import os

# Before torch loads OpenMP (GNU's, in PyTorch's and FAISS's wheels). An idle OpenMP thread
# spins 300,000 times before it sleeps by default, and two busy processes on 2 cores starve
# each other (a BPR epoch once went from 0.2 s to 45 s). Never spinning (OMP_WAIT_POLICY=
# PASSIVE, the setting until 2026-12-05) makes every parallel op wait for a wake-up: alone
# on the machine, a generator epoch took 3.8 against 2.9 s. A short spin keeps the speed
# alone and bounds the waste when cores are shared (one-off timings in the README).
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
# Ray (`pinlab embed --engine ray`) reads these when it is imported, perhaps before pinlab asks
# for it: report no usage over the network, and under `uv run` do not ship the working
# directory to each worker and start it through `uv run` again (a fresh environment, minutes;
# workers run this interpreter, where pinlab is installed).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
