"""Toy data every recommender's tests share: two tribes of users with opposite tastes.

The contract suite (`tests/test_models_recommenders.py`) runs every registered model on it;
a model's own tests (those `pinlab new recommender` writes too) check it beats popularity on
held-out items with `tribe_hit_rate`. `in_processes` runs a task in N gloo processes, as
torchrun would, so a test compares data-parallel training with one process (`tribe_fit`,
`recipe_fit`, `contrastive_steps`). Also `handmade_onnx_encoder`, an ONNX image model built
node by node, so the runtime's checks are tested without the (slow) exporter.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from pinlab_data.contracts import Float32Array, ImageArray, Int64Array, InteractionLog
from pinlab_models._onnx import EMBEDDINGS, IMAGES, metadata_props
from pinlab_models.contracts import (
    EncoderConfig,
    ImageEncoder,
    OnnxMetadata,
    RecipeConfig,
    Recommender,
    Scorer,
    TrainContext,
)

T = TypeVar("T")


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


def held_out_mrr(model: Scorer, train: InteractionLog, held_out: Int64Array) -> float:
    """Mean reciprocal rank of each user's held-out item among the items they have not seen:
    unlike a hit rate, it keeps moving once the tribes are learnt."""
    scores = model.score(np.arange(train.num_users, dtype=np.int64)).astype(np.float64)
    scores[train.users, train.items] = -np.inf
    mine = scores[np.arange(len(held_out)), held_out]
    return float((1.0 / (1 + (scores > mine[:, None]).sum(axis=1))).mean())


def in_processes(task: Callable[..., T], *args: Any, world: int = 2) -> T:
    """Rank 0's `task(*args)`, run by `world` processes in one gloo process group on this
    machine (what torchrun gives each worker). `task` must be importable by name (a
    function of a module), as the processes are spawned."""
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as probe:  # a free port for the group's rendezvous
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        spawn = multiprocessing.get_context("spawn")
        ranks = [
            spawn.Process(target=_rank, args=(rank, world, port, task, args, Path(tmp)))
            for rank in range(world)
        ]
        for process in ranks:
            process.start()
        for process in ranks:
            process.join()
        failed = [(r, p.exitcode) for r, p in enumerate(ranks) if p.exitcode]
        if failed:
            raise RuntimeError(f"ranks {failed} (rank, exit code) failed; see their stderr")
        result: T = pickle.loads((Path(tmp) / "result.pkl").read_bytes())
        return result


def _rank(
    rank: int, world: int, port: int, task: Callable[..., Any], args: tuple[Any, ...], out: Path
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # one core each, as the launcher shares them out
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = task(*args)
        if rank == 0:
            (out / "result.pkl").write_bytes(pickle.dumps(result))
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # Past the barrier every rank's work is done and rank 0's is written. Gloo's teardown can
    # still abort a rank ("terminate called without an active exception": twice in local CI
    # runs, once with both ranks past this barrier), so the process leaves without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def tribe_fit(
    name: str, config: Mapping[str, Any], run_dir: Path, seed: int = 0, stop_after: int = 0
) -> dict[str, Any]:
    """Fit `name` on `tribe_holdout`'s training part, validating the held-out items' mean
    reciprocal rank every epoch: {"loss", "valid": per epoch, "state": the fitted weights}.

    `stop_after` > 0: the fit breaks off after that many validated epochs (as if killed, its
    training state kept in `run_dir`) and a second fit resumes it.
    """
    from pinlab_models.registry import build_recommender

    train, held_out = tribe_holdout(seed=0)
    ctx = TrainContext(
        run_dir=run_dir, seed=seed, progress=False, checkpoints=True,
        item_features=tribe_features(train.num_items),
    )  # fmt: skip
    model = build_recommender(name, config)
    if stop_after:
        with contextlib.suppress(_BrokenOffError):
            model.fit(train, ctx, _break_off_after(stop_after, train, held_out))
        model = build_recommender(name, config)
        ctx = TrainContext(
            run_dir=run_dir, seed=seed, progress=False, checkpoints=True, resume=True,
            item_features=ctx.item_features,
        )  # fmt: skip
    report = model.fit(train, ctx, lambda m: held_out_mrr(m, train, held_out))
    return {
        "loss": [r.train_loss for r in report.history],
        "valid": [r.valid for r in report.history],
        "state": {k: v.detach().clone() for k, v in _net(model).state_dict().items()},
    }


class _BrokenOffError(Exception):
    pass


def _break_off_after(
    epochs: int, train: InteractionLog, held_out: Int64Array
) -> Callable[[Scorer], float]:
    seen = [0]

    def validate(model: Scorer) -> float:
        seen[0] += 1
        if seen[0] > epochs:
            raise _BrokenOffError
        return held_out_mrr(model, train, held_out)

    return validate


def _net(model: Any) -> torch.nn.Module:
    net: torch.nn.Module = model.net
    return net


def quadrants(n: int, seed: int = 0) -> tuple[ImageArray, Int64Array]:
    """16 x 16 noisy images of 4 classes: a bright square near the corner of the class's
    quadrant, and a dimmer decoy square anywhere; hard enough that a tiny encoder's
    retrieval keeps improving for a few epochs."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 140, (n, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(n) % 4
    for i, label in enumerate(labels):
        top, left = (label // 2) * 8 + rng.integers(0, 4), (label % 2) * 8 + rng.integers(0, 4)
        images[i, top : top + 4, left : left + 4] = 200
        top, left = rng.integers(0, 12, 2)
        images[i, top : top + 4, left : left + 4] = rng.integers(100, 220)
    return images, labels.astype(np.int64)


def retrieval_mrr(embeddings: Float32Array, labels: Int64Array) -> float:
    """Mean over images of 1 / the rank of the nearest other image with their label."""
    similar = embeddings @ embeddings.T
    np.fill_diagonal(similar, -np.inf)
    order = np.argsort(-similar, axis=1, kind="stable")[:, :-1]  # the image itself is last
    first = (labels[order] == labels[:, None]).argmax(axis=1)
    return float((1.0 / (1 + first)).mean())


def recipe_fit(
    recipe: RecipeConfig, config: EncoderConfig, run_dir: Path, seed: int = 0
) -> dict[str, Any]:
    """Train an encoder with `recipe` on 64 `quadrants` images, validating `retrieval_mrr`
    on 32 others every epoch: {"loss": per epoch, "valid": per epoch}."""
    from pinlab_models._recipes import train_with_recipe

    images, labels = quadrants(64, seed=0)
    valid_images, valid_labels = quadrants(32, seed=1)

    def validate(encoder: ImageEncoder) -> float:
        return retrieval_mrr(encoder.embed(valid_images), valid_labels)

    ctx = TrainContext(run_dir=run_dir, seed=seed, progress=False)
    _, report = train_with_recipe(images, labels, config, recipe, ctx, validate)
    return {
        "loss": [r.train_loss for r in report.history],
        "valid": [r.valid for r in report.history],
    }


def contrastive_steps(steps: int = 3, batch: int = 8) -> dict[str, torch.Tensor]:
    """A small network without batch statistics after `steps` Adam steps of the supervised
    contrastive loss over fixed data, through `Steps(whole_batch=True)` and `gathered`: with
    no random draws, N processes must end where one does."""
    from pinlab_models._cnn_encoder import supcon_loss
    from pinlab_models._parallel import Steps, gathered

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch * steps, 6, generator=gen)
    y = torch.arange(batch * steps) % 3
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))

    def loss(share: torch.Tensor, _: torch.Tensor, __: torch.Generator) -> torch.Tensor:
        z = gathered(torch.nn.functional.normalize(net(x[share]), dim=1))
        return supcon_loss(z, gathered(y[share]), 0.5)

    step = Steps(net, torch.optim.Adam(net.parameters(), lr=0.05), gen, loss, whole_batch=True)
    for i in range(steps):
        step(torch.arange(i * batch, (i + 1) * batch))
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def each(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    """Every `(function, args)` call in turn: several checks in one `in_processes` start."""
    return [function(*args) for function, args in calls]


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
