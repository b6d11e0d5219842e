"""SASRec's length batching and cropping: every user once, similar lengths, same positions."""

from __future__ import annotations

import itertools

import pytest
import torch

from pinlab_models._sequential import _Transformer, crop, length_batches
from pinlab_models.contracts import SASRecConfig


def test_length_batches_cover_every_row_once_grouped_by_length() -> None:
    lengths = torch.tensor([5, 2, 9, 2, 5, 9, 3, 3, 9, 2])
    batches = length_batches(lengths, 3, torch.Generator().manual_seed(0))
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == list(range(10))
    # Cut from one length-sorted order: the batches' length ranges do not overlap.
    ranges = sorted((int(lengths[b].min()), int(lengths[b].max())) for b in batches)
    assert all(high <= low for (_, high), (low, _) in itertools.pairwise(ranges))
    again = length_batches(lengths, 3, torch.Generator().manual_seed(0))
    assert [b.tolist() for b in again] == [b.tolist() for b in batches]


def test_crop_keeps_the_longest_real_tail() -> None:
    rows = torch.tensor([[0, 0, 0, 4, 5], [0, 0, 1, 2, 3]])
    assert crop(rows).tolist() == [[0, 4, 5], [1, 2, 3]]
    assert crop(torch.zeros((2, 5), dtype=torch.int64)).shape == (2, 1)


def test_cropped_rows_give_the_same_hidden_states_as_full_ones() -> None:
    torch.manual_seed(0)
    net = _Transformer(20, SASRecConfig(dim=8, layers=1, heads=1, max_len=6, dropout=0.0)).eval()
    rows = torch.tensor([[0, 0, 0, 3, 7, 1], [0, 0, 0, 0, 2, 9]])
    with torch.no_grad():
        full, cut = net(rows)[:, -1], net(crop(rows))[:, -1]
    torch.testing.assert_close(full, cut)


@pytest.mark.parametrize(("causal", "layers"), list(itertools.product([True, False], [1, 2, 3])))
def test_last_hidden_is_the_full_forward_at_the_last_position(causal: bool, layers: int) -> None:
    torch.manual_seed(layers)
    cfg = SASRecConfig(dim=8, layers=layers, heads=2, max_len=6, dropout=0.0)
    net = _Transformer(20, cfg, causal=causal).eval()
    rows = torch.tensor([[0, 0, 0, 3, 7, 1], [0, 0, 0, 0, 0, 9], [4, 5, 6, 7, 8, 2]])
    with torch.no_grad():
        torch.testing.assert_close(net.last_hidden(rows), net(rows)[:, -1])


def _sampled(loss: str, t: float = 0.75) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A tiny net's sampled loss on 2 sequences of 3 positions, and what it was fed."""
    from pinlab_models._sequential import SASRec

    cfg = SASRecConfig(dim=4, layers=1, heads=1, max_len=3, loss=loss, negatives=5, gbce_t=t)
    model = SASRec(cfg)
    torch.manual_seed(0)
    model.net = _Transformer(num_items=11, cfg=cfg)
    hidden = torch.randn(2, 3, 4)
    targets = torch.tensor([[0, 2, 3], [4, 5, 11]])
    real = targets > 0
    gen = torch.Generator().manual_seed(3)
    value = model._sampled_loss(hidden, targets, real, 11, gen)
    drawn = torch.randint(1, 12, (2, 5), generator=torch.Generator().manual_seed(3))
    return value, {
        "hidden": hidden, "targets": targets, "real": real, "drawn": drawn,
        "items": model.net.items.weight.detach(),
    }  # fmt: skip


def _scores(fed: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per real position: the positive's score, the draws' scores, which draws are its own."""
    rows, cols = fed["real"].nonzero(as_tuple=True)
    states, positives = fed["hidden"][rows, cols], fed["targets"][rows, cols]
    drawn = fed["drawn"][rows]
    pos = (states * fed["items"][positives]).sum(-1)
    neg = (states[:, None, :] * fed["items"][drawn]).sum(-1)
    return pos, neg, drawn == positives[:, None]


def test_gbce_is_bce_at_t0_and_scales_the_positive_term_by_beta() -> None:
    """gSASRec's gBCE by hand: beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = 5/10."""
    for t in (0.0, 0.75, 1.0):
        value, fed = _sampled("gbce", t)
        pos, neg, own = _scores(fed)
        alpha = 5 / 10
        beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
        by_hand = -beta * torch.log(torch.sigmoid(pos)) - torch.where(
            own, 0.0, torch.log(1 - torch.sigmoid(neg))
        ).sum(-1)
        torch.testing.assert_close(value, by_hand.mean(), rtol=1e-5, atol=1e-6)
        assert beta == {0.0: 1.0, 0.75: 0.625, 1.0: alpha}[t]


def test_sampled_softmax_is_cross_entropy_over_the_draws() -> None:
    value, fed = _sampled("sampled-softmax")
    pos, neg, own = _scores(fed)
    logits = torch.cat([pos[:, None], neg.masked_fill(own, -torch.inf)], 1)
    by_hand = -torch.log_softmax(logits, dim=1)[:, 0].mean()
    torch.testing.assert_close(value, by_hand, rtol=1e-5, atol=1e-6)


def test_hstu_is_causal_and_reads_the_time_gaps() -> None:
    from pinlab_models._hstu import _HSTU
    from pinlab_models.contracts import HSTUConfig

    torch.manual_seed(0)
    net = _HSTU(num_items=9, cfg=HSTUConfig(dim=8, heads=2, layers=2, max_len=5, dropout=0.0))
    net.eval()
    torch.nn.init.normal_(net.time_bias.weight)
    seq = torch.tensor([[0, 3, 4, 5, 6]])
    times = torch.tensor([[0, 10, 20, 1000, 5000]])
    out = net(seq, times)
    later = net(torch.tensor([[0, 3, 4, 9, 1]]), times)
    torch.testing.assert_close(out[:, :3], later[:, :3])  # the future is not read
    assert not torch.allclose(out[:, 3:], later[:, 3:])
    apart = net(seq, torch.tensor([[0, 10, 20, 30, 40]]))
    torch.testing.assert_close(out[:, :3], apart[:, :3])  # same gaps so far
    assert not torch.allclose(out[:, -1], apart[:, -1])  # other gaps, other state


def test_hstu_windows_keep_each_items_time() -> None:
    import numpy as np

    from pinlab_data.contracts import InteractionLog
    from pinlab_models._hstu import user_windows

    log = InteractionLog(
        users=np.array([1, 0, 1, 1, 0], dtype=np.int64),
        items=np.array([4, 2, 5, 6, 3], dtype=np.int64),
        timestamps=np.array([30, 7, 10, 20, 9], dtype=np.int64),
        weights=np.ones(5, dtype=np.float32),
        user_ids=np.arange(2, dtype=np.int64),
        item_ids=np.arange(7, dtype=np.int64),
    )
    items, times = user_windows(log, 2)
    assert items.tolist() == [[3, 4], [7, 5]]  # indexes + 1, oldest first, last two
    assert times.tolist() == [[7, 9], [20, 30]]
