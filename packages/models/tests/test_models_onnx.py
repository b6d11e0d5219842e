"""ONNX exports: the runtime refuses a file of another model in one line naming the file and
the fix; the (slow) export round trip matches eager PyTorch, int8 stays close."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pinlab_models import (
    FP32_TOLERANCE,
    INT8_COSINE_FLOOR,
    AlignConfig,
    CNNEncoder,
    EncoderConfig,
    ImageTextModel,
    OnnxImageEncoder,
    OnnxMetadata,
    PinlabModelError,
    Runtime,
    TextEncoder,
    agreement,
    export_image_checkpoint,
    export_text_tower,
    load_image_encoder,
    load_image_text,
    load_text_encoder,
    metadata_props,
    onnx_file,
    read_metadata,
    seed_everything,
    sha256_file,
)
from pinlab_models._align import build_tower
from pinlab_models.testing import handmade_onnx_encoder

SIZE, DIM = 32, 8


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run with a small encoder checkpoint (random weights) at visual/encoder.pt."""
    seed_everything(0)
    CNNEncoder(EncoderConfig(widths=(4, 8), embedding_dim=DIM)).save(
        tmp_path / "visual" / "encoder.pt"
    )
    return tmp_path


def meta_of(checkpoint: Path, **changes: object) -> OnnxMetadata:
    fields: dict[str, object] = {
        "kind": "image-encoder",
        "precision": "fp32",
        "source": str(checkpoint),
        "source_sha256": sha256_file(checkpoint),
        "model_id": CNNEncoder.load(checkpoint).model_id,
        "inputs": f"images: uint8 [N, {SIZE}, {SIZE}, 3]",
        "embedding_dim": DIM,
        "image_size": SIZE,
        "exported_with": "test",
    }
    return OnnxMetadata.model_validate(fields | changes)


def images(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_metadata_round_trips_through_props() -> None:
    meta = OnnxMetadata(
        kind="text-tower",
        precision="int8",
        source="m",
        source_sha256="ab" * 32,
        model_id="m",
        inputs="input_ids: int64 [N, T]",
        embedding_dim=384,
        max_seq_length=256,
        exported_with="test",
    )
    props = metadata_props(meta)
    assert props["pinlab.source_sha256"] == "ab" * 32
    assert "pinlab.image_size" not in props  # None fields are left out
    assert read_metadata(props | {"other": "kept apart"}) == meta
    assert read_metadata({"producer": "someone else"}) is None
    assert read_metadata({"pinlab.kind": "a toaster"}) is None


def test_a_file_of_this_checkpoint_loads_and_embeds(run: Path) -> None:
    checkpoint = run / "visual" / "encoder.pt"
    handmade_onnx_encoder(run / "onnx" / "encoder.onnx", SIZE, DIM, meta_of(checkpoint))
    encoder = load_image_encoder(checkpoint, "onnx", run / "onnx", threads=1)
    assert isinstance(encoder, OnnxImageEncoder)
    # The checkpoint's id, so it searches the index that checkpoint built.
    assert encoder.model_id == CNNEncoder.load(checkpoint).model_id
    vectors = encoder.embed(images(5), batch_size=2)
    assert vectors.shape == (5, DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(PinlabModelError, match=r"shape \(N, 32, 32, 3\)"):
        encoder.embed(images(2, size=16))


def _other_model(run: Path) -> None:
    handmade_onnx_encoder(
        run / "onnx" / "encoder.onnx",
        SIZE,
        DIM,
        meta_of(run / "visual" / "encoder.pt", source_sha256="0" * 64),
    )


def _wrong_kind(run: Path) -> None:
    meta = meta_of(run / "visual" / "encoder.pt", kind="image-text-tower")
    handmade_onnx_encoder(run / "onnx" / "encoder.onnx", SIZE, DIM, meta)


def _wrong_size(run: Path) -> None:
    handmade_onnx_encoder(
        run / "onnx" / "encoder.onnx", 16, DIM, meta_of(run / "visual/encoder.pt")
    )


def _wrong_dim(run: Path) -> None:
    handmade_onnx_encoder(
        run / "onnx" / "encoder.onnx", SIZE, 4, meta_of(run / "visual/encoder.pt")
    )


def _no_metadata(run: Path) -> None:
    handmade_onnx_encoder(run / "onnx" / "encoder.onnx", SIZE, DIM, None)


def _not_onnx(run: Path) -> None:
    (run / "onnx").mkdir()
    (run / "onnx" / "encoder.onnx").write_bytes(b"not a protobuf at all")


def _fp32_as_int8(run: Path) -> None:
    path = run / "onnx" / "encoder.int8.onnx"
    handmade_onnx_encoder(path, SIZE, DIM, meta_of(run / "visual" / "encoder.pt"))


@pytest.mark.parametrize(
    ("make", "runtime", "match"),
    [
        (_other_model, "onnx", r"was exported from another model \(weights sha256 000000000000"),
        (_wrong_kind, "onnx", "holds the image-text-tower, not the image-encoder"),
        (_wrong_size, "onnx", r"takes images: uint8 \[N, 16, 16, 3\], but the model takes"),
        (_wrong_dim, "onnx", "not 8-d embeddings"),
        (_no_metadata, "onnx", "has no pinlab metadata"),
        (_not_onnx, "onnx", r"is not a readable ONNX model \(INVALID_PROTOBUF\)"),
        (_fp32_as_int8, "onnx-int8", "is fp32, but --runtime onnx-int8 reads int8"),
        (lambda _: None, "onnx", "which does not exist; export the run with"),
    ],
)
def test_a_file_of_another_model_is_refused_in_one_line(
    run: Path, make: Callable[[Path], None], runtime: Runtime, match: str
) -> None:
    make(run)
    with pytest.raises(PinlabModelError, match=match) as caught:
        load_image_encoder(run / "visual" / "encoder.pt", runtime, run / "onnx")
    message = str(caught.value)
    assert "\n" not in message
    assert str(onnx_file(run / "onnx", "image-encoder", runtime)) in message
    flag = " --int8" if runtime == "onnx-int8" else ""
    assert f"`pinlab export onnx --run {run}{flag}`" in message


@pytest.mark.slow
def test_image_exports_match_eager_and_int8_stays_close(run: Path) -> None:
    checkpoint = run / "visual" / "encoder.pt"
    written = export_image_checkpoint(
        checkpoint, "image-encoder", run / "onnx", images(64), images(128, seed=1), str(run)
    )
    assert [(w.precision, w.within) for w in written] == [("fp32", True), ("int8", True)]
    fresh = images(200, seed=2)  # not the images the export was checked or calibrated on
    eager = CNNEncoder.load(checkpoint).embed(fresh)
    fp32 = load_image_encoder(checkpoint, "onnx", run / "onnx").embed(fresh)
    int8 = load_image_encoder(checkpoint, "onnx-int8", run / "onnx").embed(fresh)
    assert agreement(fp32, eager).max_abs_diff <= FP32_TOLERANCE
    assert agreement(int8, eager).min_cosine >= INT8_COSINE_FLOOR
    assert agreement(int8, eager).max_abs_diff > FP32_TOLERANCE  # it is quantized
    encoder = load_image_encoder(checkpoint, "onnx-int8", run / "onnx")
    assert isinstance(encoder, OnnxImageEncoder)
    assert encoder.metadata.source_sha256 == sha256_file(checkpoint)
    assert encoder.metadata.run == str(run)
    assert encoder.metadata.quantization and "calibrated on 128" in encoder.metadata.quantization
    # A retrained checkpoint makes the export stale.
    seed_everything(1)
    CNNEncoder(EncoderConfig(widths=(4, 8), embedding_dim=DIM)).save(checkpoint)
    with pytest.raises(PinlabModelError, match="exported from another model"):
        load_image_encoder(checkpoint, "onnx", run / "onnx")


@pytest.mark.slow
def test_text_tower_and_aligned_tower_exports(tmp_path: Path) -> None:
    texts = ["a red striped vase", "a neon star on a dark wall", "soft blue knitted scarf"]
    written = export_text_tower(tmp_path / "onnx", texts, int8=True)
    assert [(w.kind, w.precision, w.within) for w in written] == [
        ("text-tower", "fp32", True),
        ("text-tower", "int8", True),
    ]
    fresh = ["a wooden chair by the window", "green dotted mug", "x " * 400]  # the last: truncated
    eager = TextEncoder().encode(fresh)
    fp32 = load_text_encoder("onnx", tmp_path / "onnx").encode(fresh, batch_size=2)
    int8 = load_text_encoder("onnx-int8", tmp_path / "onnx").encode(fresh)
    assert agreement(fp32, eager).max_abs_diff <= FP32_TOLERANCE
    assert agreement(int8, eager).min_cosine >= INT8_COSINE_FLOOR
    with pytest.raises(PinlabModelError, match="empty"):
        load_text_encoder("onnx", tmp_path / "onnx").encode(["fine", " "])

    config = AlignConfig(widths=(4, 8), projection_dim=16)
    checkpoint = tmp_path / "visual" / "image_text.pt"
    ImageTextModel(build_tower(config), config).save(checkpoint)
    export_image_checkpoint(checkpoint, "image-text-tower", tmp_path / "onnx", images(16))
    model = load_image_text(checkpoint, "onnx", tmp_path / "onnx")
    reference = load_image_text(checkpoint, "torch")
    assert model.model_id == reference.model_id
    assert (
        agreement(model.embed_images(images(8)), reference.embed_images(images(8))).max_abs_diff
        <= FP32_TOLERANCE
    )
