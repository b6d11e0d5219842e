"""Export the image encoders and the MiniLM text tower to ONNX, and quantize them to int8.

An export takes what the eager model takes: an image model reads packed uint8 images and does
`to_input` inside the graph; the text tower does MiniLM's mean pooling and L2 normalisation
after the transformer. Each file is compared with eager PyTorch on real inputs before it is
renamed into place (`FP32_TOLERANCE`), and records `OnnxMetadata` in its metadata_props.

int8: convolutions gain only from static quantization (QDQ, int8 weights per output channel,
uint8 activations whose ranges are calibrated on the run's training images); dynamic
quantization leaves them in float32 and quantizes activations per call, which made the CNN 5x
slower than float32. The text tower is quantized dynamically (int8 MatMul weights per output
channel: per-tensor weights left some caption embeddings at cosine 0.91 to eager's).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data import write_bytes_atomic
from pinlab_data.contracts import Float32Array, ImageArray
from pinlab_models._align import load_image_text_model
from pinlab_models._cnn_encoder import CNNEncoder, to_input
from pinlab_models._onnx import (
    ATTENTION_MASK,
    EMBEDDINGS,
    FP32_TOLERANCE,
    IMAGES,
    INPUT_IDS,
    INT8_COSINE_FLOOR,
    METADATA_PREFIX,
    agreement,
    embed_images_with,
    encode_texts_with,
    metadata_props,
    minilm_max_tokens,
    minilm_sha256,
    onnx_file,
    session,
    sha256_file,
    token_batches,
)
from pinlab_models._text import MINILM_DIM, MINILM_ID, TextEncoder, _load_minilm, check_texts
from pinlab_models.contracts import (
    OnnxAgreement,
    OnnxExport,
    OnnxKind,
    OnnxMetadata,
    PinlabModelError,
)

if TYPE_CHECKING:
    import onnx

CALIBRATION_BATCH = 64
CHECK_BATCH = 32
"""Texts per call when checking the text tower: sorted by length, so the long one pads few."""
_LONG_TEXT = " ".join(["a long caption past the text tower's token limit"] * 40)
"""Checked at export with the given texts, so truncation agrees with sentence-transformers'."""


class _PackedImages(nn.Module):
    """uint8 (N, S, S, 3) images in, the network's embeddings out: `to_input` in the graph."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(to_input(images))
        return out


class _MiniLMTower(nn.Module):
    """What sentence-transformers' all-MiniLM-L6-v2 computes after tokenizing: the token
    states, mean-pooled over the attention mask, L2-normalised."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, dim=1)


def _export(
    module: nn.Module, args: tuple[torch.Tensor, ...], dynamic: dict[str, dict[int, str]]
) -> onnx.ModelProto:
    """torch.export's ONNX exporter, inputs named as `dynamic` lists them, batch axes free."""
    with torch.no_grad(), warnings.catch_warnings(), _quiet("onnxscript", "onnx_ir"):
        # Inputs sharing an axis (the text tower's batch and sequence) keep its first name,
        # and the exporter warns that it did.
        warnings.filterwarnings("ignore", message="# The axis name")
        program = torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            verbose=False,
            input_names=list(dynamic),
            output_names=[EMBEDDINGS],
            dynamic_shapes=dynamic,
        )
    if program is None:  # only the TorchScript exporter writes to a file and returns None
        raise RuntimeError("torch.onnx.export returned no program")
    model: onnx.ModelProto = program.model_proto
    return model


def _with_metadata(model: onnx.ModelProto, meta: OnnxMetadata) -> bytes:
    kept = [p for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata_props(meta).items():
        model.metadata_props.add(key=key, value=value)
    blob: bytes = model.SerializeToString()
    return blob


def _versions() -> str:
    import onnx
    import onnxruntime

    return (
        f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}"
    )


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """The exporter's graph passes log each rewrite at INFO: keep them to warnings."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantization tools log a root-logger warning for every tensor they
    leave in float (the uint8 images, shapes): silence them for the call."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


class _Batches:
    """A CalibrationDataReader (ONNX Runtime checks for `get_next` only): one feed per batch."""

    def __init__(self, images: ImageArray, batch_size: int) -> None:
        starts = range(0, len(images), batch_size)
        self._feeds = iter([{IMAGES: images[s : s + batch_size]} for s in starts])

    def get_next(self) -> dict[str, ImageArray] | None:
        return next(self._feeds, None)


def _quantize_static(blob: bytes, calibration: ImageArray) -> onnx.ModelProto:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="pinlab-onnx-") as tmp, _quiet_quantizer():
        fp32, pre, int8 = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(blob)
        # ORT's symbolic shape inference fails on the exporter's broadcast of the L2 norm;
        # ONNX's own shape inference and ORT's graph optimisation still run.
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(int8),
            _Batches(np.ascontiguousarray(calibration), CALIBRATION_BATCH),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return onnx.load(str(int8))


def _quantize_dynamic(blob: bytes) -> onnx.ModelProto:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="pinlab-onnx-") as tmp, _quiet_quantizer():
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(blob)
        quantize_dynamic(
            str(fp32),
            str(int8),
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},  # weights only; Q @ K^T stays float
        )
        return onnx.load(str(int8))


@dataclass(frozen=True)
class _Written:
    blob: bytes
    check: OnnxAgreement
    seconds: float


def _write_checked(
    path: Path, meta: OnnxMetadata, written: _Written, fp32: bool, floor: float
) -> OnnxExport:
    check = written.check
    if fp32:
        bound, within = f"max_abs_diff <= {FP32_TOLERANCE:g}", check.max_abs_diff <= FP32_TOLERANCE
        if not within:
            raise RuntimeError(
                f"the ONNX export of {meta.source} differs from eager PyTorch by up to "
                f"{check.max_abs_diff:.3g} (tolerance {FP32_TOLERANCE:g}); nothing was written"
            )
    else:
        bound, within = f"min_cosine >= {floor:g}", check.min_cosine >= floor
    write_bytes_atomic(path, written.blob)
    return OnnxExport(
        file=str(path),
        kind=meta.kind,
        precision=meta.precision,
        bytes=len(written.blob),
        seconds=round(written.seconds, 2),
        agreement=check,
        bound=bound,
        within=within,
    )


@dataclass(frozen=True)
class _ImageSource:
    net: nn.Module
    image_size: int
    embedding_dim: int
    model_id: str
    embed: Callable[[ImageArray], Float32Array]


def _image_source(checkpoint: Path, kind: OnnxKind) -> _ImageSource:
    if kind == "image-encoder":
        encoder = CNNEncoder.load(checkpoint)
        return _ImageSource(
            encoder.net, encoder.image_size, encoder.embedding_dim, encoder.model_id, encoder.embed
        )
    if kind == "image-text-tower":
        model = load_image_text_model(checkpoint)
        return _ImageSource(
            model.tower, model.image_size, MINILM_DIM, model.model_id, model.embed_images
        )
    raise ValueError(f"{kind} is not an image model")


def export_image_checkpoint(
    checkpoint: Path,
    kind: OnnxKind,
    onnx_dir: Path,
    images: ImageArray,
    calibration: ImageArray | None = None,
    run: str | None = None,
    threads: int | None = None,
) -> list[OnnxExport]:
    """Export an image checkpoint (`image-encoder` or `image-text-tower`) to ONNX in
    `onnx_dir`, and to int8 when `calibration` images are given.

    Each file is compared with eager PyTorch on `images` before it is written (atomically);
    an fp32 file beyond `FP32_TOLERANCE` is not written at all.
    """
    source = _image_source(checkpoint, kind)
    size = source.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3) or len(images) == 0:
        raise PinlabModelError(
            f"checking the export of {checkpoint} needs images of shape (N, {size}, {size}, 3), "
            f"got {images.shape}"
        )
    meta = OnnxMetadata(
        kind=kind,
        precision="fp32",
        source=str(checkpoint),
        source_sha256=sha256_file(checkpoint),
        model_id=source.model_id,
        run=run,
        inputs=f"{IMAGES}: uint8 [N, {size}, {size}, 3]",
        embedding_dim=source.embedding_dim,
        image_size=size,
        exported_with=_versions(),
    )
    reference = source.embed(images)

    def checked(model: onnx.ModelProto, meta: OnnxMetadata, started: float) -> _Written:
        blob = _with_metadata(model, meta)
        got = embed_images_with(session(blob, threads), images, 512)
        return _Written(blob, agreement(got, reference), time.perf_counter() - started)

    started = time.perf_counter()
    example = torch.from_numpy(np.ascontiguousarray(images[np.arange(2) % len(images)]))
    model = _export(_PackedImages(source.net), (example,), {IMAGES: {0: "batch"}})
    fp32 = checked(model, meta, started)
    written = [_write_checked(onnx_file(onnx_dir, kind, "onnx"), meta, fp32, True, 0.0)]
    if calibration is not None:
        started = time.perf_counter()
        int8_meta = meta.model_copy(
            update={
                "precision": "int8",
                "quantization": "static QDQ: int8 weights per channel, uint8 activations "
                f"min-max calibrated on {len(calibration)} training images",
            }
        )
        int8 = checked(_quantize_static(fp32.blob, calibration), int8_meta, started)
        path = onnx_file(onnx_dir, kind, "onnx-int8")
        written.append(_write_checked(path, int8_meta, int8, False, INT8_COSINE_FLOOR))
    return written


def export_text_tower(
    onnx_dir: Path,
    texts: Sequence[str],
    int8: bool = False,
    run: str | None = None,
    threads: int | None = None,
) -> list[OnnxExport]:
    """Export the packaged MiniLM (the text tower every run shares; alignment trains the image
    side only) to `onnx_dir`, and to int8 if asked, each compared with sentence-transformers
    on `texts` plus one text past the token limit before it is written."""
    check_texts(texts)
    model = _load_minilm("cpu")
    modules = [type(m).__name__ for m in model]
    stages: list[Any] = list(model)  # sentence-transformers' modules, typed as plain Modules
    pooling = stages[1].get_config_dict().get("pooling_mode") if len(stages) > 1 else None
    if modules != ["Transformer", "Pooling", "Normalize"] or pooling != "mean":
        raise RuntimeError(
            f"{MINILM_ID} here is {modules} with {pooling!r} pooling, not the mean-pooled, "
            "normalised model the export rebuilds"
        )
    checked_texts = [*texts, _LONG_TEXT]
    reference = TextEncoder("cpu").encode(checked_texts, batch_size=CHECK_BATCH)
    meta = OnnxMetadata(
        kind="text-tower",
        precision="fp32",
        source=MINILM_ID,
        source_sha256=minilm_sha256(),
        model_id=MINILM_ID,
        run=run,
        inputs=f"{INPUT_IDS}: int64 [N, T], {ATTENTION_MASK}: int64 [N, T]",
        embedding_dim=MINILM_DIM,
        max_seq_length=minilm_max_tokens(),
        exported_with=_versions(),
    )

    def checked(model: onnx.ModelProto, meta: OnnxMetadata, started: float) -> _Written:
        blob = _with_metadata(model, meta)
        got = encode_texts_with(session(blob, threads), checked_texts, CHECK_BATCH)
        return _Written(blob, agreement(got, reference), time.perf_counter() - started)

    started = time.perf_counter()
    _, ids, mask = next(token_batches(["an example", "an example of two lengths"], 2))
    axes = {0: "batch", 1: "sequence"}
    proto = _export(
        _MiniLMTower(stages[0].auto_model),
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        {INPUT_IDS: axes, ATTENTION_MASK: axes},
    )
    fp32 = checked(proto, meta, started)
    written = [_write_checked(onnx_file(onnx_dir, "text-tower", "onnx"), meta, fp32, True, 0.0)]
    if int8:
        started = time.perf_counter()
        int8_meta = meta.model_copy(
            update={
                "precision": "int8",
                "quantization": "dynamic: int8 MatMul weights per channel, activations per call",
            }
        )
        quantized = checked(_quantize_dynamic(fp32.blob), int8_meta, started)
        path = onnx_file(onnx_dir, "text-tower", "onnx-int8")
        written.append(_write_checked(path, int8_meta, quantized, False, INT8_COSINE_FLOOR))
    return written
