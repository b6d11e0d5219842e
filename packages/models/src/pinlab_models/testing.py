"""Toy data every recommender's tests share: two tribes of users with opposite tastes.

The contract suite (`tests/test_models_recommenders.py`) runs every registered model on it;
a model's own tests (those `pinlab new recommender` writes too) check it beats popularity on
held-out items with `tribe_hit_rate`. Also `handmade_onnx_encoder`, an ONNX image model built
node by node, so the runtime's checks are tested without the (slow) exporter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_models._onnx import EMBEDDINGS, IMAGES, metadata_props
from pinlab_models.contracts import OnnxMetadata, Recommender, TrainContext


def two_tribes(num_users: int = 40, num_items: int = 20, seed: int = 0) -> InteractionLog:
    """Even users like the first half of the items, odd users the second; item 0 is a hit."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    half = num_items // 2
    for u in range(num_users):
        offset = 0 if u % 2 == 0 else half
        liked = rng.choice(half, 6, replace=False) + offset
        users += [u] * len(liked)
        items += list(liked)
    users += list(range(num_users))
    items += [0] * num_users
    n = len(users)
    return InteractionLog(
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        timestamps=rng.permutation(n).astype(np.int64),  # item 0 anywhere in a sequence
        weights=np.ones(n, dtype=np.float32),
        user_ids=np.arange(100, 100 + num_users, dtype=np.int64),
        item_ids=np.arange(500, 500 + num_items, dtype=np.int64),
    )


def tribe_features(num_items: int = 20) -> Float32Array:
    """Item features for the models that read them: which half an item is in, and noise."""
    side = (np.arange(num_items) >= num_items // 2).astype(np.float32)
    noise = np.random.default_rng(1).normal(0, 0.1, (num_items, 6))
    return np.column_stack([side, 1 - side, noise]).astype(np.float32)


def tribe_holdout(num_users: int = 60, seed: int = 0) -> tuple[InteractionLog, Int64Array]:
    """`two_tribes` without each user's latest item other than the hit (item 0).

    Returns the training log and the held-out item of each user (one per user, in user order).
    """
    log = two_tribes(num_users=num_users, seed=seed)
    # Latest first, so np.unique's first occurrence per user is the user's latest non-hit item.
    order = np.lexsort((-log.timestamps, log.users))
    order = order[log.items[order] != 0]
    users, first = np.unique(log.users[order], return_index=True)
    held = order[first]
    keep = np.ones(len(log), dtype=np.bool_)
    keep[held] = False
    train = InteractionLog(
        users=log.users[keep],
        items=log.items[keep],
        timestamps=log.timestamps[keep],
        weights=log.weights[keep],
        user_ids=log.user_ids,
        item_ids=log.item_ids,
    )
    assert len(users) == num_users
    return train, log.items[held]


def tribe_hit_rate(model: Recommender, run_dir: Path, k: int = 5, seed: int = 0) -> float:
    """Share of users whose held-out item (`tribe_holdout`) is in the model's top k.

    Training items are never recommended. A model that learns which tribe each user is in
    finds nearly all of them at k = 5 (4 or 5 unseen items of the user's tribe are left);
    popularity, blind to tribes, about a third.
    """
    train, held_out = tribe_holdout(seed=seed)
    ctx = TrainContext(
        run_dir=run_dir, seed=seed, progress=False, item_features=tribe_features(train.num_items)
    )
    model.fit(train, ctx)
    scores = model.score(np.arange(train.num_users, dtype=np.int64)).astype(np.float64)
    scores[train.users, train.items] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == held_out[:, None]).any(axis=1).mean())


def handmade_onnx_encoder(
    path: Path, image_size: int, embedding_dim: int, metadata: OnnxMetadata | None, seed: int = 0
) -> None:
    """Write an image model as pinlab's exports are shaped: uint8 `images` (N, S, S, 3) in,
    L2-normalised `embeddings` (N, D) out (a random linear map), `metadata` in its props."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    flat = image_size * image_size * 3
    weights = np.random.default_rng(seed).normal(size=(flat, embedding_dim)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", [IMAGES], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", ["pixels", "flat_shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["projected"]),
            helper.make_node("LpNormalization", ["projected"], [EMBEDDINGS], axis=1, p=2),
        ],
        "handmade_encoder",
        [helper.make_tensor_value_info(IMAGES, TensorProto.UINT8, ["N", *[image_size] * 2, 3])],
        [helper.make_tensor_value_info(EMBEDDINGS, TensorProto.FLOAT, ["N", embedding_dim])],
        [
            numpy_helper.from_array(np.array([-1, flat], dtype=np.int64), "flat_shape"),
            numpy_helper.from_array(weights, "weights"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # what ONNX Runtime 1.20 and later read
    for key, value in (metadata_props(metadata) if metadata else {}).items():
        model.metadata_props.add(key=key, value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
