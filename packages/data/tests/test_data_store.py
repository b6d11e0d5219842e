"""Dataset directories: round trips, atomic replacement, and one-line errors for bad files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pinlab_data import (
    INTERACTION_SCHEMA,
    PIN_SCHEMA,
    USER_SCHEMA,
    DatasetManifest,
    ImageArray,
    PinlabDataError,
    RunPaths,
    load_dataset,
    open_npz,
    read_json_object,
    run_data_dir,
    save_dataset,
    write_bytes_atomic,
    write_json_atomic,
)

IMAGE_SIZE = 4
PIN_FIELDS = pa.schema([f for f in PIN_SCHEMA if f.name != "external_id"])
USER_FIELDS = pa.schema([f for f in USER_SCHEMA if f.name != "external_id"])


def world(num_pins: int = 3) -> dict[str, Any]:
    """A tiny valid dataset as save_dataset's keyword arguments."""
    pins = pa.table(
        {
            "pin_id": list(range(10, 10 + num_pins)),
            "caption": [f"pin {i}" for i in range(num_pins)],
            "category": ["star"] * num_pins,
            "creator_id": [1] * num_pins,
            "creator_group": ["established"] * num_pins,
            "image_row": list(range(num_pins)),
            "image_path": [None] * num_pins,
        }
    )
    users = pa.table({"user_id": [1, 2]})
    interactions = pa.table(
        {
            "user_id": [1, 1, 2],
            "pin_id": [10, 11, 10],
            "timestamp": [100, 200, 150],
            "event": ["view", "save", "click"],
            "weight": [1.0, 4.0, 2.0],
        }
    )
    manifest = DatasetManifest(
        name="tiny",
        source="test",
        num_pins=num_pins,
        num_users=2,
        num_interactions=3,
        image_size=IMAGE_SIZE,
        categories=["star"],
    )
    images: ImageArray = np.arange(num_pins * IMAGE_SIZE * IMAGE_SIZE * 3, dtype=np.uint8).reshape(
        num_pins, IMAGE_SIZE, IMAGE_SIZE, 3
    )
    return {
        "manifest": manifest,
        "pins": pins,
        "users": users,
        "interactions": interactions,
        "images": images,
        "extra": {"truth.npz": b"truth"},
    }


def saved(tmp_path: Path, **changes: Any) -> Path:
    return save_dataset(tmp_path / "ds", **(world() | changes))


def error_of(root: Path) -> str:
    with pytest.raises(PinlabDataError) as info:
        load_dataset(root)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_round_trip(tmp_path: Path) -> None:
    parts = world()
    root = save_dataset(tmp_path / "ds", **parts)
    ds = load_dataset(root)
    assert ds.root == root
    assert ds.manifest == parts["manifest"]
    assert ds.pins.drop_columns(["external_id"]).equals(parts["pins"].cast(PIN_FIELDS))
    assert ds.users.drop_columns(["external_id"]).equals(parts["users"].cast(USER_FIELDS))
    assert ds.pins.column("external_id").null_count == 3  # absent columns added since v1: null
    assert ds.interactions.equals(parts["interactions"].cast(INTERACTION_SCHEMA))
    assert isinstance(ds.images, np.memmap)
    np.testing.assert_array_equal(ds.images, parts["images"])
    assert (root / "truth.npz").read_bytes() == b"truth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_external_ids_round_trip_and_older_datasets_load_without_them(tmp_path: Path) -> None:
    users = pa.table({"user_id": [1, 2], "external_id": ["alice", None]})
    root = saved(tmp_path, users=users)
    assert load_dataset(root).users.column("external_id").to_pylist() == ["alice", None]
    pq.write_table(pa.table({"user_id": [1, 2]}), root / "users.parquet")  # as written before
    loaded = load_dataset(root).users
    assert loaded.schema == USER_SCHEMA
    assert loaded.column("external_id").to_pylist() == [None, None]


def test_without_images_loads_none(tmp_path: Path) -> None:
    ds = load_dataset(saved(tmp_path, images=None))
    assert ds.images is None
    assert not (ds.root / "images.npy").exists()


def test_save_casts_to_the_schema_and_drops_other_columns(tmp_path: Path) -> None:
    pins = world()["pins"].append_column("note", pa.array(["x", "y", "z"]))
    pins = pins.set_column(0, "pin_id", pins.column("pin_id").cast(pa.int32()))
    ds = load_dataset(saved(tmp_path, pins=pins))
    assert ds.pins.schema == PIN_SCHEMA


def test_users_keep_their_attribute_columns_and_refuse_nested_ones(tmp_path: Path) -> None:
    users = pa.table({"age": [24, None], "user_id": [1, 2], "gender": ["F", "M"]})
    loaded = load_dataset(saved(tmp_path, users=users)).users
    assert loaded.column_names == ["user_id", "external_id", "age", "gender"]
    assert loaded.column("age").to_pylist() == [24, None]
    assert loaded.select(["user_id", "external_id"]).schema == USER_SCHEMA
    nested = pa.table({"user_id": [1, 2], "tags": [["a"], []]})
    with pytest.raises(PinlabDataError, match="column 'tags' is list<item: string>; a user attr"):
        saved(tmp_path / "again", users=nested)
    assert not (tmp_path / "again").exists()


def test_save_names_a_missing_column(tmp_path: Path) -> None:
    with pytest.raises(PinlabDataError, match="interactions table has no column 'weight'"):
        saved(tmp_path, interactions=world()["interactions"].drop_columns(["weight"]))


def test_save_refuses_nulls_in_required_columns(tmp_path: Path) -> None:
    users = pa.table({"user_id": pa.array([1, None], pa.int64())})
    with pytest.raises(PinlabDataError, match="'user_id' has 1 null value"):
        saved(tmp_path, users=users)


def test_save_checks_manifest_images_and_extra_names(tmp_path: Path) -> None:
    manifest = world()["manifest"].model_copy(update={"num_pins": 7})
    with pytest.raises(PinlabDataError, match="num_pins=7 but the pins table has 3 rows"):
        saved(tmp_path, manifest=manifest)
    with pytest.raises(PinlabDataError, match=r"\(N, H, W, 3\) uint8"):
        saved(tmp_path, images=np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(PinlabDataError, match="image_size=4"):
        saved(tmp_path, images=np.zeros((3, 5, 5, 3), dtype=np.uint8))
    for name in ("../escape", "pins.parquet", ".hidden", ""):
        with pytest.raises(PinlabDataError, match="extra file name"):
            saved(tmp_path, extra={name: b""})
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_non_empty_directory_without_overwrite(tmp_path: Path) -> None:
    root = saved(tmp_path)
    with pytest.raises(PinlabDataError, match="not empty; pass overwrite"):
        save_dataset(root, **world(num_pins=4))
    assert load_dataset(root).pins.num_rows == 3
    (tmp_path / "file").write_text("x")
    with pytest.raises(PinlabDataError, match="not a directory"):
        save_dataset(tmp_path / "file", **world())


def test_saves_into_an_existing_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    assert load_dataset(saved(tmp_path)).pins.num_rows == 3


def test_overwrite_replaces_the_whole_directory(tmp_path: Path) -> None:
    root = saved(tmp_path)
    (root / "stale.txt").write_text("old")
    save_dataset(root, **world(num_pins=5), overwrite=True)
    assert load_dataset(root).pins.num_rows == 5
    assert not (root / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_overwrite_never_replaces_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(PinlabDataError, match=r"ds is not empty and holds no dataset.json, so"):
        save_dataset(folder, **world(num_pins=5), overwrite=True)
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_failed_write_leaves_the_old_dataset_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = saved(tmp_path)
    real_write = pq.write_table

    def write_then_crash(table: pa.Table, where: Path) -> None:
        if Path(where).name == "interactions.parquet":
            Path(where).write_bytes(b"half a file")
            raise OSError("disk full")
        real_write(table, where)

    monkeypatch.setattr(pq, "write_table", write_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_dataset(root, **world(num_pins=5), overwrite=True)
    assert load_dataset(root).pins.num_rows == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_failed_swap_puts_the_old_dataset_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = saved(tmp_path)
    real_rename = Path.rename

    def rename(self: Path, target: Path) -> Path:
        if ".tmp-" in self.name:
            raise OSError("rename failed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        save_dataset(root, **world(num_pins=5), overwrite=True)
    monkeypatch.undo()
    assert load_dataset(root).pins.num_rows == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_missing_or_non_directory_root(tmp_path: Path) -> None:
    assert "does not exist" in error_of(tmp_path / "nope")
    run = tmp_path / "run"  # a run passed where its dataset goes
    save_dataset(run / "data", **world())
    (run / "run.json").write_text("{}")
    assert error_of(run) == f"{run} is a pinlab run, not a dataset; its dataset is {run / 'data'}"
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in error_of(tmp_path / "file")


def test_directory_without_manifest(tmp_path: Path) -> None:
    message = error_of(tmp_path)
    assert message == (
        f"{tmp_path} is not a pinlab dataset (no dataset.json); create one with "
        f"`pinlab data synth --out {tmp_path}`"
    )


def test_bad_manifests(tmp_path: Path) -> None:
    root = saved(tmp_path)
    manifest = root / "dataset.json"
    good = json.loads(manifest.read_text())
    manifest.write_text("{not json")
    assert "dataset.json is not valid JSON" in error_of(root)
    manifest.write_text("[1, 2]")
    assert "holds a JSON list, not an object" in error_of(root)
    manifest.write_text(json.dumps(good | {"num_pins": "many"}))
    assert "field 'num_pins'" in error_of(root)
    manifest.write_text(json.dumps({k: v for k, v in good.items() if k != "name"}))
    assert "field 'name'" in error_of(root)
    manifest.write_text(json.dumps(good | {"schema_version": 99}))
    assert "schema_version 99, newer than this pinlab reads (1); upgrade pinlab" in error_of(root)


def test_missing_and_malformed_parquet(tmp_path: Path) -> None:
    root = saved(tmp_path)
    (root / "users.parquet").unlink()
    assert "users.parquet is missing" in error_of(root)
    (root / "users.parquet").write_bytes(b"garbage, not parquet at all")
    message = error_of(root)
    assert "users.parquet is not a readable Parquet file" in message


def test_missing_column_and_uncastable_type(tmp_path: Path) -> None:
    root = saved(tmp_path)
    pq.write_table(world()["pins"].drop_columns(["caption"]), root / "pins.parquet")
    assert "pins.parquet has no column 'caption'" in error_of(root)
    interactions = world()["interactions"].set_column(
        2, "timestamp", pa.array(["100", "soon", "150"])
    )
    pq.write_table(world()["pins"], root / "pins.parquet")
    pq.write_table(interactions, root / "interactions.parquet")
    message = error_of(root)
    assert "interactions.parquet column 'timestamp' is string and cannot be read as int64" in (
        message
    )


def test_castable_types_load_cast(tmp_path: Path) -> None:
    root = saved(tmp_path)
    pq.write_table(pa.table({"user_id": pa.array([1, 2], pa.int16())}), root / "users.parquet")
    assert load_dataset(root).users.schema == USER_SCHEMA


def test_nulls_in_required_columns_refuse_to_load(tmp_path: Path) -> None:
    root = saved(tmp_path)
    pq.write_table(pa.table({"user_id": pa.array([1, None], pa.int64())}), root / "users.parquet")
    assert "column 'user_id' has 1 null value(s), first at row 1" in error_of(root)


def test_bad_images(tmp_path: Path) -> None:
    root = saved(tmp_path)
    (root / "images.npy").write_bytes(b"garbage")  # NumPy called it a pickle to load unsafely
    assert "images.npy is not a .npy array (it does not start with NumPy's header)" in (
        error_of(root)
    )
    np.save(root / "images.npy", np.zeros((3, 4, 4, 3), dtype=np.float32))
    assert "float32 array of shape (3, 4, 4, 3)" in error_of(root)
    np.save(root / "images.npy", np.zeros((3, 4, 4), dtype=np.uint8))
    assert "must be (N, H, W, 3) uint8 RGB" in error_of(root)


def test_write_json_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "record.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": [1, 2]})
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    manifest = world()["manifest"]
    write_json_atomic(path, manifest)
    assert DatasetManifest.model_validate_json(path.read_text()) == manifest
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert DatasetManifest.model_validate_json(path.read_text()) == manifest
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]


def test_write_bytes_atomic_cleans_up_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "blob.bin"
    write_bytes_atomic(path, b"old")

    def fail(self: Path, target: Path) -> Path:
        raise OSError("replace failed")

    monkeypatch.setattr(Path, "replace", fail)
    with pytest.raises(OSError, match="replace failed"):
        write_bytes_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["blob.bin"]


def test_atomic_writer_keeps_the_old_file_on_error_and_uses_normal_permissions(
    tmp_path: Path,
) -> None:
    import os

    from pinlab_data import atomic_writer

    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="crash"), atomic_writer(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("crash")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temp file left
    umask = os.umask(0o022)
    os.umask(umask)
    with atomic_writer(tmp_path / "new.bin") as f:
        f.write(b"new")
    assert (tmp_path / "new.bin").read_bytes() == b"new"
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_output_that_cannot_be_a_directory_is_refused_naming_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pinlab_data import atomic_directory, make_directory

    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, where a directory was asked for")
    for target in (blocker / "out", blocker / "deeper" / "out"):
        with pytest.raises(PinlabDataError, match=f"{blocker} is a file, not a directory"):
            make_directory(target)
        with pytest.raises(PinlabDataError, match=f"{blocker} is a file, not a directory"):
            save_dataset(target, **world())
    assert blocker.read_text().startswith("a file")
    assert make_directory(tmp_path / "a" / "b").is_dir()  # where it can be, it is made

    # A parent that takes no new entries (a read-only or virtual file system): the message
    # names the output and that parent, not the hidden temporary directory beside it.
    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        if not self.is_dir():  # as on Linux: an existing directory is EEXIST, then accepted
            raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(PinlabDataError) as caught, atomic_directory(tmp_path / "run"):
        pass
    message = str(caught.value)
    assert message.startswith(f"cannot write {tmp_path / 'run'}: {tmp_path} takes no new")
    assert "Read-only file system" in message and ".tmp" not in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist; rerun it"),
        (b'{"seed": ', "is not valid JSON (Expecting value: line 1 column 10 (char 9)); rerun it"),
        (b"\xff\xfe{}", "is not valid JSON ('utf-8' codec can't decode byte 0xff"),
        (b"[1, 2]", "holds a JSON list, not an object; rerun it"),
        (b"", "is not valid JSON (Expecting value: line 1 column 1 (char 0)); rerun it"),
    ],
)
def test_a_json_record_that_is_not_an_object_is_bad_input_naming_the_file(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "train.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PinlabDataError) as info:
        read_json_object(path, "rerun it")
    assert str(info.value).startswith(f"{path} {message}")


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def damaged_member() -> bytes:
    """An archive whose directory is whole but whose member's compressed bytes are not."""
    data = bytearray(npz_bytes(a=np.random.default_rng(0).normal(size=2000)))
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    return bytes(data)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist; rerun it"),
        (b"", "is not an .npz archive; rerun it"),
        (b"\x80\x04 not a pickle either", "is not an .npz archive; rerun it"),  # NumPy: "pickle"
        (npz_bytes(a=np.arange(9))[:60], "is not a readable .npz archive (BadZipFile: "),
        (npz_bytes(b=np.arange(9)), "has no array 'a' (it holds b); rerun it"),
        (damaged_member(), "is not a readable .npz archive ("),
    ],
    ids=["missing", "empty", "foreign", "torn", "no-member", "damaged-member"],
)
def test_an_npz_archive_that_cannot_be_read_is_bad_input_naming_the_file(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "world.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PinlabDataError) as info, open_npz(path, "rerun it") as archive:
        archive["a"]
    assert str(info.value).startswith(f"{path} {message}")
    path.write_bytes(npz_bytes(a=np.arange(3)))
    with open_npz(path, "rerun it") as archive:
        assert archive["a"].tolist() == [0, 1, 2]


def test_a_json_record_reads_back_what_was_written(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "r.json", {"seed": 3, "caption": "été"})
    assert read_json_object(tmp_path / "r.json") == {"seed": 3, "caption": "été"}


def test_a_moved_run_reads_its_own_data_only_where_the_recorded_one_is_gone(
    tmp_path: Path,
) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (run / "data").mkdir(parents=True)
    recorded = tmp_path / "gone"
    assert run_data_dir(recorded, run) == recorded  # no data/ dataset inside: as recorded
    (run / "data" / "dataset.json").write_text("{}")
    assert run_data_dir(recorded, run) == run / "data"
    elsewhere.mkdir()
    assert run_data_dir(elsewhere, run) == elsewhere  # still there: never swapped


def test_run_paths_lie_inside_the_run_and_name_only_saved_recommenders(tmp_path: Path) -> None:
    run = RunPaths(tmp_path / "run")
    assert run.trained_recommenders() == []  # no recommender/ folder yet
    for name in ("mf", "ease", "popularity"):
        run.recommender(name).parent.mkdir(parents=True)
    for name in ("mf", "ease"):
        run.recommender(name).write_bytes(b"")
    (run.recommenders / "eval.json").write_text("{}")
    assert run.trained_recommenders() == ["ease", "mf"]  # popularity has no model.pt
    paths = [run.record, run.data, run.encoder, run.untrained_encoder, run.image_text,
             run.generator, run.classifier, run.index, run.onnx, run.embeddings]  # fmt: skip
    assert len(set(paths)) == len(paths)
    assert all(p.is_relative_to(run.root) and p != run.root for p in paths)
