"""Cold start on a small synthetic world: the hybrid finds pins nobody engaged with."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pinlab_data import SynthConfig, interaction_log, load_dataset, write_synth
from pinlab_eval import apply_protocol, protocol_spec
from pinlab_models import HybridConfig
from pinlab_tasks.cold_start import eval_cold_start, random_hit_rate
from pinlab_tasks.runs import RunLayout

# Enough pins that the cold ones (about 200) leave room above a random ranking's hit rate.
WORLD = SynthConfig(
    num_pins=1000, num_users=300, num_categories=6, num_creators=30, interactions_per_user=15
)


def test_random_hit_rate_is_exact(tmp_path: Path) -> None:
    small = WORLD.model_copy(update={"num_pins": 100, "num_users": 60})
    write_synth(tmp_path / "world", small)
    log = interaction_log(load_dataset(tmp_path / "world"))
    holdout = apply_protocol(log, protocol_spec("cold-start", {"seed": 3})).test
    assert holdout.candidates is not None
    cold, k = len(holdout.candidates), 10
    _, per_user = np.unique(holdout.target.users, return_counts=True)
    expected = np.mean([1 - math.comb(cold - r, k) / math.comb(cold, k) for r in per_user])
    assert random_hit_rate(holdout, k) == pytest.approx(expected)
    # Monte Carlo agrees: draw k random candidates per user and count hits.
    rng = np.random.default_rng(0)
    users = np.unique(holdout.target.users)
    hits = 0
    for _ in range(200):
        for user in users:
            drawn = rng.choice(holdout.candidates, k, replace=False)
            hits += int(np.isin(drawn, holdout.target.items[holdout.target.users == user]).any())
    assert hits / (200 * len(users)) == pytest.approx(expected, abs=0.02)


@pytest.mark.slow
def test_hybrid_beats_random_3x_and_popularity_1_5x_on_cold_pins(tmp_path: Path) -> None:
    write_synth(tmp_path / "world", WORLD)
    run = RunLayout(tmp_path / "run")
    config = HybridConfig(epochs=10, dim=32, hidden_dim=64, batch_size=512)
    result = eval_cold_start(
        run, tmp_path / "world", "text", seed=0, device="cpu", config=config, progress=False
    )
    models = result["models"]
    assert models["hybrid"]["hr@10"] >= 3 * models["random"]["hr@10"]
    assert models["hybrid"]["hr@10"] >= 1.5 * models["popularity"]["hr@10"]
    assert result["hr@10_vs_random"] == pytest.approx(
        models["hybrid"]["hr@10"] / models["random"]["hr@10"]
    )
    assert result["cold_items"] > 0 and result["counts"]["target_users"] > 0
    saved = json.loads((run.root / "cold_start" / "eval.json").read_text())
    assert saved["models"]["hybrid"] == models["hybrid"]
    assert (run.root / "cold_start" / "hybrid.pt").is_file()
    assert json.loads(run.record.read_text())["steps"][-1]["command"] == "eval cold-start"
