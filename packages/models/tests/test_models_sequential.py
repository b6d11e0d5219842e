"""SASRec's length batching and cropping: every user once, similar lengths, same positions."""

from __future__ import annotations

import itertools

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
