"""`pinlab embed`: shards that match the encoder, both engines' vectors identical, and bad
input (no Ray, an address nobody answers, an interrupted run) that leaves nothing behind."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pinlab_data import (
    SynthConfig,
    load_dataset,
    load_embeddings_manifest,
    read_embeddings,
    save_dataset,
    synthesize,
)
from pinlab_models import (
    AlignConfig,
    CNNEncoder,
    EncoderConfig,
    ImageTextModel,
    TextEncoder,
    seed_everything,
)
from pinlab_models._align import build_tower
from pinlab_tasks import embedding
from pinlab_tasks.cli import run as cli_run
from pinlab_tasks.runs import RunLayout


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = cli_run([*args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def _world(root: Path, aligned: bool) -> RunLayout:
    """A 150-pin world (one caption emptied) and a run with an untrained CNN, and with
    `aligned` an untrained image-text model, whose text tower is MiniLM all the same."""
    manifest, pins, users, interactions, images, _ = synthesize(
        SynthConfig(num_pins=150, num_users=10, num_categories=3, seed=1)
    )
    captions = pins.column("caption").to_pylist()
    captions[0] = "  "
    pins = pins.set_column(pins.schema.get_field_index("caption"), "caption", pa.array(captions))
    save_dataset(root / "data", manifest, pins, users, interactions, images=images)
    run = RunLayout(root / "run")
    run.log_step("setup", {}, data_dir=root / "data")
    seed_everything(0)
    CNNEncoder(EncoderConfig(widths=(8, 16), embedding_dim=16)).save(run.encoder)
    if aligned:
        config = AlignConfig(widths=(8, 16), projection_dim=16)
        ImageTextModel(build_tower(config), config).save(run.image_text)
    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    return _world(tmp_path_factory.mktemp("embed"), aligned=False)


def _images(run: RunLayout) -> np.ndarray:
    ds = load_dataset(run.data_dir())
    assert ds.images is not None
    return np.asarray(ds.images[ds.pins.column("image_row").to_numpy()])


def test_local_shards_round_trip_and_match_the_encoder(
    world: RunLayout, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "emb"
    code, result, _ = cli(
        capsys, "embed", "--run", str(world.root), "--out", str(out), "--shard-rows", "64"
    )
    assert code == 0, result
    assert result["sets"] == {"image": {"count": 150, "dim": 16}}
    assert "no image-text model" in result["text"]
    manifest = load_embeddings_manifest(out)
    assert manifest.engine == "local" and manifest.count == 150
    assert manifest.sets["image"].shards == [f"image-0000{i}.parquet" for i in range(3)]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["manifest.json", *manifest.sets["image"].shards])
    schema = pq.read_schema(out / "image-00000.parquet")
    assert schema.field("vector").type == pa.list_(pa.float32(), 16)
    assert (
        schema.field("pin_id").type
        == load_dataset(world.data_dir()).pins.schema.field("pin_id").type
    )

    ids, vectors = read_embeddings(out)
    np.testing.assert_array_equal(ids, load_dataset(world.data_dir()).pins.column("pin_id"))
    encoder = CNNEncoder.load(world.encoder)
    images = _images(world)
    # The same calls as the shards made: bit-identical; one call over everything differs
    # only by float32 round-off (batch boundaries change the kernels' summation order).
    per_shard = np.concatenate([encoder.embed(images[s : s + 64]) for s in range(0, 150, 64)])
    np.testing.assert_array_equal(vectors, per_shard)
    np.testing.assert_allclose(vectors, encoder.embed(images), atol=1e-6)
    steps = world.read_record()["steps"]
    assert steps[-1]["command"] == "embed" and steps[-1]["config"]["engine"] == "local"


def test_an_interrupted_run_leaves_the_old_embeddings_whole(
    world: RunLayout, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "emb"
    embedding.embed_dataset(world, world.data_dir(), out=out, shard_rows=64)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []
    original = embedding.ShardEmbedder.__call__

    def interrupted(self: embedding.ShardEmbedder, batch: Any) -> dict[str, np.ndarray]:
        calls.append(1)
        if len(calls) % 2 == 0:  # the second shard of each run
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(embedding.ShardEmbedder, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embedding.embed_dataset(world, world.data_dir(), out=out, shard_rows=32)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["emb"]  # no hidden temporary left
    with pytest.raises(KeyboardInterrupt):
        embedding.embed_dataset(world, world.data_dir(), out=tmp_path / "new", shard_rows=32)
    assert [p.name for p in tmp_path.iterdir()] == ["emb"]


def test_out_replaces_only_embeddings_never_a_folder_embed_did_not_write(
    world: RunLayout, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    own = tmp_path / "emb"
    embedding.embed_dataset(world, world.data_dir(), out=own, shard_rows=64)
    (own / "stale.txt").write_text("x")
    code, _, _ = cli(capsys, "embed", "--run", str(world.root), "--out", str(own))
    assert code == 0 and not (own / "stale.txt").exists()  # re-embedding replaces its own
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    (tmp_path / "file.txt").write_text("mine too")
    data_before = sorted(p.name for p in world.data_dir().iterdir())
    for out, why in [
        (foreign, "holds no manifest.json, so pinlab did not write it and will not replace it"),
        (world.data_dir(), "holds no manifest.json"),
        (tmp_path / "file.txt", "exists and is not a directory"),
    ]:
        code, result, _ = cli(capsys, "embed", "--run", str(world.root), "--out", str(out))
        assert code == 2 and why in result["error"], result
    assert (foreign / "keep.txt").read_text() == "mine"
    assert (tmp_path / "file.txt").read_text() == "mine too"
    assert sorted(p.name for p in world.data_dir().iterdir()) == data_before


def test_without_ray_the_ray_engine_says_how_to_install_it(
    world: RunLayout, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when not installed
    code, result, err = cli(capsys, "embed", "--run", str(world.root), "--engine", "ray")
    assert code == 2
    assert "uv sync --extra distributed" in result["error"]
    assert len(err.strip().splitlines()) == 1
    assert not world.embeddings.exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (f"127.0.0.1:{_closed_port()}", "no Ray cluster answers at 127.0.0.1:"),
        ("head-node", "is not HOST:PORT"),
    ],
)
def test_an_address_nobody_answers_is_one_line_and_exit_2(
    world: RunLayout, capsys: pytest.CaptureFixture[str], address: str, message: str
) -> None:
    args = ("embed", "--run", str(world.root), "--engine", "ray", "--address", address)
    code, result, err = cli(capsys, *args)
    assert code == 2 and message in result["error"]
    assert "--address" in result["error"] and len(err.strip().splitlines()) == 1


def test_an_address_needs_the_ray_engine(
    world: RunLayout, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, _ = cli(capsys, "embed", "--run", str(world.root), "--address", "auto")
    assert code == 2 and "--engine ray" in result["error"]


def test_a_run_without_an_encoder_is_refused(
    world: RunLayout, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, result, _ = cli(capsys, "embed", "--run", str(tmp_path), "--data", str(world.data_dir()))
    assert code == 2 and "no image encoder" in result["error"]


@pytest.mark.slow
def test_captions_go_through_the_text_tower_and_empty_ones_are_left_out(tmp_path: Path) -> None:
    run = _world(tmp_path, aligned=True)
    result = embedding.embed_dataset(run, run.data_dir(), shard_rows=64)
    assert result["sets"]["text"] == {"count": 149, "dim": 384}
    assert "1 pins with an empty caption" in result["text"]
    ids, vectors = read_embeddings(run.embeddings, "text")
    pins = load_dataset(run.data_dir()).pins
    assert ids.tolist() == pins.column("pin_id").to_pylist()[1:]
    captions = pins.column("caption").to_pylist()[1:]
    np.testing.assert_allclose(vectors, TextEncoder().encode(captions), atol=1e-5)


@pytest.mark.slow
def test_a_two_worker_ray_cluster_gives_the_local_engines_vectors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip(
        "ray.data", reason="Ray is an optional extra: `uv sync --extra distributed`"
    )
    run = _world(tmp_path, aligned=True)
    common = ("embed", "--run", str(run.root), "--shard-rows", "40")
    code, local, _ = cli(capsys, *common, "--out", str(tmp_path / "local"))
    assert code == 0, local
    code, ray, _ = cli(
        capsys, "--threads", "2", *common, "--engine", "ray", "--workers", "2",
        "--out", str(tmp_path / "ray"),
    )  # fmt: skip
    assert code == 0, ray
    assert (ray["engine"], ray["workers"], ray["threads_per_worker"]) == ("ray", 2, 1)
    assert ray["cluster_start_s"] > 0 and ray["sets"] == local["sets"]
    assert load_embeddings_manifest(tmp_path / "ray").engine == "ray"
    for kind in ("image", "text"):
        local_ids, local_vectors = read_embeddings(tmp_path / "local", kind)
        ray_ids, ray_vectors = read_embeddings(tmp_path / "ray", kind)
        np.testing.assert_array_equal(ray_ids, local_ids)
        np.testing.assert_array_equal(ray_vectors, local_vectors)  # bit for bit
