"""What `mult-vae` must learn (the contract suite checks the rest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pinlab_models import MultVae, MultVaeConfig, TrainContext, build_recommender
from pinlab_models.testing import tribe_hit_rate, two_tribes

NAME = "mult-vae"


def test_mult_vae_beats_popularity(tmp_path: Path) -> None:
    # Each user's latest item is held out: popularity, blind to the two tribes, finds about a
    # third of them in its top 5; a model that learns which tribe a user is in, nearly all.
    ours = tribe_hit_rate(build_recommender(NAME), tmp_path / "model")
    popularity = tribe_hit_rate(build_recommender("popularity"), tmp_path / "popularity")
    assert ours >= popularity + 0.3, f"hit rate@5 {ours:.2f}, popularity {popularity:.2f}"


def test_mult_vae_scores_decode_the_mean_of_the_normalised_row(tmp_path: Path) -> None:
    log = two_tribes()
    model = MultVae(MultVaeConfig(epochs=3, anneal_cap=0.2, total_anneal_steps=10))
    ctx = TrainContext(run_dir=tmp_path / "run", seed=0, progress=False)
    model.fit(log, ctx)
    # 40 users in one batch of 500: one update an epoch, beta = min(0.2, 3 / 10).
    assert model.updates == 3 and model.beta() == 0.2
    x = np.zeros((log.num_users, log.num_items), dtype=np.float32)
    x[log.users, log.items] = 1.0
    net = model.net
    assert net is not None
    with torch.no_grad():
        h = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))
        mu = net.to_gaussian(torch.tanh(net.encoder(h)))[:, : model.config.latent_dim]
        expected = net.to_items(torch.tanh(net.decoder(mu))).numpy()
    users = np.arange(log.num_users, dtype=np.int64)
    np.testing.assert_allclose(model.score(users), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.score(users), model.score(users))  # no sampling
