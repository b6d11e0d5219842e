"""`pinlab index build` over embedding shards (tuned, interrupted, refused) and `bench index`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pinlab_serve._pq as pq_impl
from pinlab_serve import MANIFEST_FILE, ClusteredVectors, PinIndex, PinlabServeError
from pinlab_tasks import queries
from pinlab_tasks.cli import run
from pinlab_tasks.index_bench import drawn_shards, write_shards

DIM = 16


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """1,800 clustered vectors as three .npy shards (pin ids are their row numbers)."""
    folder = tmp_path / "shards"
    folder.mkdir()
    vectors = ClusteredVectors(DIM, clusters=6, seed=0).sample(1800, seed=1)
    for n in range(3):
        np.save(folder / f"part-{n}.npy", vectors[n * 600 : (n + 1) * 600])
    return folder


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = run([*args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def test_parse_size() -> None:
    assert queries.parse_size("1GB") == 10**9
    assert queries.parse_size("512 MiB") == 512 * 2**20
    assert queries.parse_size("2.5gb") == 2_500_000_000
    assert queries.parse_size("4096") == 4096
    for bad in ("", "1 parsec", "-1GB", "GB"):
        with pytest.raises(PinlabServeError, match="is not a size"):
            queries.parse_size(bad)


def test_tuned_build_through_the_cli(
    capsys: pytest.CaptureFixture[str], shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "index"
    code, result, err = cli(
        capsys,
        *["index", "build", "--vectors", str(shards), "--out", str(out)],
        *["--model-id", "enc-x", "--target-recall", "0.5", "--max-memory", "1MB"],
        *["--kind", "ivf-pq"],
    )
    assert code == 0, err
    tuning = result["tuning"]
    chosen = tuning["candidates"][tuning["chosen"]]
    assert result["kind"].startswith("IVF") and chosen["meets"] and chosen["recall_low"] >= 0.5
    assert result["memory_bytes"] <= 10**6 and result["latency"]["p99_ms"] > 0
    assert result["recall_at_10"] == tuning["fresh_recall_at_10"]
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["tuning"] == tuning and manifest["count"] == 1800
    index = PinIndex.load(out, expect_model_id="enc-x", mmap=True)
    assert len(index.similar(5, 10)) == 10


def test_impossible_targets_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], shards: Path, tmp_path: Path
) -> None:
    base = ["index", "build", "--vectors", str(shards), "--out", str(tmp_path / "i")]
    code, result, _ = cli(capsys, *base, "--model-id", "m", "--max-memory", "2KB")
    assert code == 2
    assert "raise --max-memory to at least" in result["error"] and "\n" not in result["error"]
    code, result, _ = cli(capsys, *base, "--model-id", "m", "--max-memory", "lots")
    assert code == 2 and "write e.g. 1GB" in result["error"]
    code, result, _ = cli(capsys, *base, "--kind", "ivf-pq")
    assert code == 2 and "--model-id" in result["error"]
    assert not (tmp_path / "i").exists()


def test_index_out_is_never_a_dataset_or_a_file(
    capsys: pytest.CaptureFixture[str], shards: Path, tmp_path: Path
) -> None:
    """--out DATASET wrote the index into it, changing its fingerprint under every run."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text("{}")
    note = tmp_path / "note.txt"
    note.write_text("mine")
    build = ["index", "build", "--vectors", str(shards), "--model-id", "m", "--out"]
    for out, message in ((data, "holds dataset.json, which index build did not write"),
                         (note, "is a file; pass a folder")):  # fmt: skip
        code, result, _ = cli(capsys, *build, str(out))
        assert code == 2 and message in result["error"], result
    assert [p.name for p in data.iterdir()] == ["dataset.json"] and note.read_text() == "mine"
    for _ in range(2):  # an earlier --out is built again
        code, result, err = cli(capsys, *build, str(tmp_path / "index"))
        assert code == 0, err


def test_interrupted_build_keeps_the_previous_index(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "index"
    old = queries.build_index(
        None, vectors=[shards], out=out, model_id="old", kind="ivf-pq", target_recall=0.5
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_add, calls = pq_impl._add, []

    def add_then_fail(index: Any, ids: Any, vectors: Any) -> None:
        calls.append(len(ids))
        if len(calls) == 2:  # the second shard: the first is already in
            raise KeyboardInterrupt
        real_add(index, ids, vectors)

    monkeypatch.setattr(pq_impl, "_add", add_then_fail)
    with pytest.raises(KeyboardInterrupt):
        queries.build_index(
            None, vectors=[shards], out=out, model_id="new", kind="opq-ivf-pq", target_recall=0.5
        )
    assert calls == [600, 600]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half-written
    loaded = PinIndex.load(out, expect_model_id="old")
    assert loaded.manifest.checksum == old["checksum"] and len(loaded) == 1800


def test_bench_index_reuses_work_shards_only_when_drawn_the_same_way(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    first = drawn_shards(folder, 1000, 8, 0, lambda _: None)
    made = first[0].stat().st_mtime_ns
    assert drawn_shards(folder, 1000, 8, 0, lambda _: None) == first  # the same: reused
    assert first[0].stat().st_mtime_ns == made
    # Another dimension used to be reused and failed an assertion (exit 1); another seed was
    # reused silently, so the bench reported a seed its vectors were not drawn with.
    for rows, dim, seed in [(1000, 16, 0), (1000, 16, 3), (1500, 16, 3)]:
        (path,) = drawn_shards(folder, rows, dim, seed, lambda _: None)
        again = np.load(path)
        assert again.shape == (rows, dim)
        expected = write_shards(tmp_path / f"fresh-{dim}-{seed}", rows, dim, seed, lambda _: None)
        np.testing.assert_array_equal(again, np.load(expected[0]))
    assert sorted(p.name for p in folder.iterdir()) == ["shards.json", "vectors-00000.npy"]
    (folder / "shards.json").write_text("{torn")  # damaged: drawn again, not trusted
    (path,) = drawn_shards(folder, 1500, 16, 3, lambda _: None)
    assert np.load(path).shape == (1500, 16)


def test_bench_index_work_is_never_a_dataset_or_a_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--work DATASET added shards/ and index-flat/ to it, so every run trained on it was
    refused as on changed data; --work FILE was an exit 1."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text("{}")
    note = tmp_path / "note.txt"
    note.write_text("mine")
    bench = ["bench", "index", "--vectors", "1000", "--dim", "8", "--kinds", "flat", "--work"]
    for work, message in ((data, "holds dataset.json, which bench index did not write"),
                          (note, "is a file; pass a folder")):  # fmt: skip
        code, result, _ = cli(capsys, *bench, str(work))
        assert code == 2 and message in result["error"], result
    assert [p.name for p in data.iterdir()] == ["dataset.json"]
    work = tmp_path / "work"
    for _ in range(2):  # an earlier --work is taken again
        code, result, err = cli(capsys, *bench, str(work))
        assert code == 0, err
    assert sorted(p.name for p in work.iterdir()) == ["index-flat", "queries.npz", "shards"]


@pytest.mark.slow
def test_bench_index(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, result, err = cli(
        capsys,
        *["bench", "index", "--vectors", "3000", "--dim", str(DIM), "--queries", "60"],
        *["--kinds", "flat,ivf-pq,hnsw-pq", "--tune-recall", "0.7", "--work", str(tmp_path)],
    )
    assert code == 0, err
    rows = {row["kind"]: row for row in result["kinds"]}
    assert set(rows) == {"flat", "ivf-pq", "hnsw-pq"}
    assert rows["flat"]["points"][0]["recall_at_10"] == 1.0
    for row in rows.values():
        assert row["memory_mb"] > 0 and row["build_s"] >= 0
        assert all(p["p99_ms"] >= p["p50_ms"] > 0 for p in row["points"])
    # Trained indexes take measurable time; a flat build of 3,000 vectors may round to 0.
    assert rows["ivf-pq"]["build_s"] > 0 and rows["hnsw-pq"]["build_s"] > 0
    widest = rows["ivf-pq"]["points"][-1]
    assert widest["recall_at_10"] >= rows["ivf-pq"]["points"][0]["recall_at_10"]
    tuned = result["tuner"]
    assert tuned["fresh_queries_recall_at_10"] > 0.5
    assert (tmp_path / "shards" / "vectors-00000.npy").is_file()
