"""The run's models as ONNX files, run by ONNX Runtime (`--runtime onnx` / `onnx-int8`).

Each file carries `OnnxMetadata` in its metadata_props (written by `_onnx_export`), above all
the SHA-256 of the weights it came from. A loader refuses a file whose fingerprint, kind,
precision or inputs differ from what the run has now, in one line naming the file and the
command that re-exports it. An image model reads packed uint8 images (N, S, S, 3), as the eager
encoders' `embed` does; the text tower reads MiniLM's token ids and attention mask, from the
packaged fast tokenizer, truncated where sentence-transformers truncates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import ValidationError

from pinlab_data.contracts import Float32Array, ImageArray, Int64Array
from pinlab_models._align import (
    ImageTextModel,
    load_alignment_checkpoint,
    load_image_text_model,
)
from pinlab_models._cnn_encoder import CHECKPOINT_KIND as ENCODER_KIND
from pinlab_models._cnn_encoder import CNNEncoder
from pinlab_models._runtime import load_checkpoint
from pinlab_models._text import (
    MINILM_DIM,
    MINILM_ID,
    TextEncoder,
    check_texts,
    minilm_path,
)
from pinlab_models.contracts import (
    AlignConfig,
    EncoderConfig,
    OnnxAgreement,
    OnnxKind,
    OnnxMetadata,
    PinlabModelError,
    Runtime,
)

if TYPE_CHECKING:
    import onnxruntime as ort
    from tokenizers import Tokenizer

IMAGES, EMBEDDINGS = "images", "embeddings"
INPUT_IDS, ATTENTION_MASK = "input_ids", "attention_mask"
STEMS: dict[OnnxKind, str] = {
    "image-encoder": "encoder",
    "image-text-tower": "image_text",
    "text-tower": "text",
}
FP32_TOLERANCE = 1e-4
"""Largest |ONNX - eager| of any coordinate of a unit embedding an fp32 export may show (the
CNN and MiniLM measure about 1e-7)."""
INT8_COSINE_FLOOR = 0.98
"""Smallest cosine between an int8 embedding and eager's that an int8 export should keep."""
METADATA_PREFIX = "pinlab."


def onnx_file(onnx_dir: Path, kind: OnnxKind, runtime: Runtime) -> Path:
    """`encoder.onnx`, `text.int8.onnx`...: where the export of `kind` for `runtime` lives."""
    if runtime == "torch":
        raise ValueError("the torch runtime reads checkpoints, not ONNX files")
    suffix = ".int8.onnx" if runtime == "onnx-int8" else ".onnx"
    return onnx_dir / f"{STEMS[kind]}{suffix}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def minilm_sha256() -> str:
    """The text tower's fingerprint: its packaged weights file."""
    return sha256_file(minilm_path() / "model.safetensors")


@cache
def minilm_max_tokens() -> int:
    """sentence-transformers' `max_seq_length` for the packaged MiniLM (256)."""
    config = json.loads((minilm_path() / "sentence_bert_config.json").read_text())
    return int(config["max_seq_length"])


def metadata_props(meta: OnnxMetadata) -> dict[str, str]:
    """The metadata_props entries that record `meta` (`read_metadata` reads them back)."""
    return {METADATA_PREFIX + k: str(v) for k, v in meta.model_dump(exclude_none=True).items()}


def read_metadata(props: dict[str, str]) -> OnnxMetadata | None:
    """The pinlab metadata among an ONNX file's metadata_props; None when it has none."""
    fields = {
        k.removeprefix(METADATA_PREFIX): v
        for k, v in props.items()
        if k.startswith(METADATA_PREFIX)
    }
    if not fields:
        return None
    try:
        return OnnxMetadata.model_validate(fields)
    except ValidationError:
        return None


def agreement(got: Float32Array, reference: Float32Array) -> OnnxAgreement:
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = (got * reference).sum(axis=1) / np.maximum(norms, 1e-12)
    return OnnxAgreement(
        samples=len(got),
        max_abs_diff=float(np.abs(got - reference).max()),
        min_cosine=float(cosine.min()),
        mean_cosine=float(cosine.mean()),
    )


def session(model: Path | bytes, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with `threads` intra-op threads (default: PyTorch's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # Idle workers sleep, as PyTorch's OpenMP ones do here after a short spin (pinlab_tasks):
    # on shared cores a spinning pool takes the time other threads are waiting for.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def embed_images_with(
    run: ort.InferenceSession, images: ImageArray, batch_size: int
) -> Float32Array:
    out: list[Float32Array] = []
    for start in range(0, len(images), batch_size):
        chunk = np.ascontiguousarray(images[start : start + batch_size])
        out.append(run.run([EMBEDDINGS], {IMAGES: chunk})[0])
    if not out:
        return np.zeros((0, run.get_outputs()[0].shape[-1]), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


@cache
def _tokenizer() -> Tokenizer:
    """MiniLM's fast tokenizer, truncating where sentence-transformers does; no padding (each
    batch is padded to its longest text)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=minilm_max_tokens())
    tokenizer.no_padding()
    return tokenizer


def token_batches(
    texts: Sequence[str], batch_size: int
) -> Iterator[tuple[Int64Array, Int64Array, Int64Array]]:
    """(rows, input ids, attention mask) per batch, texts sorted by length as
    sentence-transformers sorts them, so a batch pads little."""
    encodings = _tokenizer().encode_batch(list(texts))
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids = np.zeros((len(rows), int(lengths[rows].max())), dtype=np.int64)
        mask = np.zeros_like(ids)  # padded positions are masked, so their id does not matter
        for i, row in enumerate(rows):
            ids[i, : lengths[row]] = encodings[row].ids
            mask[i, : lengths[row]] = 1
        yield rows, ids, mask


def encode_texts_with(
    run: ort.InferenceSession, texts: Sequence[str], batch_size: int
) -> Float32Array:
    out = np.zeros((len(texts), MINILM_DIM), dtype=np.float32)
    for rows, ids, mask in token_batches(texts, batch_size):
        out[rows] = run.run([EMBEDDINGS], {INPUT_IDS: ids, ATTENTION_MASK: mask})[0]
    return out


class OnnxImageEncoder:
    """An `ImageEncoder` through ONNX Runtime: a run's export of an image model. Its
    `model_id` is the checkpoint's, so it searches the index that checkpoint built."""

    def __init__(self, run: ort.InferenceSession, metadata: OnnxMetadata, runtime: Runtime):
        assert metadata.image_size is not None
        self.metadata = metadata
        self.runtime = runtime
        self.model_id = metadata.model_id
        self._session = run
        self._size = metadata.image_size

    @property
    def embedding_dim(self) -> int:
        return self.metadata.embedding_dim

    @property
    def image_size(self) -> int:
        return self._size

    def embed(self, images: ImageArray, batch_size: int = 512) -> Float32Array:
        if images.ndim != 4 or images.shape[1:] != (self._size, self._size, 3):
            raise PinlabModelError(
                f"encoder expects images of shape (N, {self._size}, {self._size}, 3), "
                f"got {images.shape}; resize them to the encoder's image size"
            )
        return embed_images_with(self._session, images, batch_size)


class OnnxTextEncoder:
    """MiniLM through ONNX Runtime, tokenized by its own fast tokenizer: `TextEncoder`'s
    `encode`, the same embeddings within the export's checked tolerance."""

    model_id = MINILM_ID
    embedding_dim = MINILM_DIM

    def __init__(self, run: ort.InferenceSession, metadata: OnnxMetadata, runtime: Runtime):
        self.metadata = metadata
        self.runtime = runtime
        self._session = run

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Float32Array:
        check_texts(texts)
        return encode_texts_with(self._session, texts, batch_size)


class OnnxImageTextModel:
    """`ImageTextModel`'s embeddings through ONNX Runtime: the aligned tower and MiniLM."""

    def __init__(self, images: OnnxImageEncoder, texts: OnnxTextEncoder) -> None:
        self.images = images
        self.texts = texts
        self.model_id = images.model_id
        self.runtime = images.runtime

    @property
    def embedding_dim(self) -> int:
        return MINILM_DIM

    @property
    def image_size(self) -> int:
        return self.images.image_size

    def embed_images(self, images: ImageArray, batch_size: int = 512) -> Float32Array:
        return self.images.embed(images, batch_size)

    def embed(self, images: ImageArray, batch_size: int = 512) -> Float32Array:
        return self.images.embed(images, batch_size)

    def embed_texts(self, texts: Sequence[str]) -> Float32Array:
        return self.texts.encode(texts)


@dataclass(frozen=True)
class _Expected:
    """What the run has now, which an ONNX file must have been exported from."""

    kind: OnnxKind
    source: str
    sha256: str
    inputs: dict[str, tuple[str, tuple[int | None, ...]]]
    embedding_dim: int


def _spec(inputs: dict[str, tuple[str, tuple[int | None, ...]]]) -> str:
    def dims(shape: tuple[int | None, ...]) -> str:
        return ", ".join("N" if d is None else str(d) for d in shape)

    return ", ".join(
        f"{name}: {kind.removeprefix('tensor(').rstrip(')')} [{dims(shape)}]"
        for name, (kind, shape) in inputs.items()
    )


def _open_checked(
    path: Path, expected: _Expected, runtime: Runtime, threads: int | None
) -> tuple[ort.InferenceSession, OnnxMetadata]:
    """A session on `path` once its metadata and inputs match `expected`; else one line that
    names the file and the command that re-exports it."""
    flag = " --int8" if runtime == "onnx-int8" else ""
    fix = f"re-export it with `pinlab export onnx --run {path.parent.parent}{flag}`"
    if not path.is_file():
        raise PinlabModelError(
            f"--runtime {runtime} needs {path}, which does not exist; export the run with "
            f"`pinlab export onnx --run {path.parent.parent}{flag}`"
        )
    try:
        run = session(path, threads)
    except Exception as exc:  # ONNX Runtime raises its own unexported error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        parts = first.split(" : ")  # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load ..."
        detail = parts[2] if len(parts) > 3 else first[:120]
        raise PinlabModelError(f"{path} is not a readable ONNX model ({detail}); {fix}") from None
    meta = read_metadata(dict(run.get_modelmeta().custom_metadata_map))
    if meta is None:
        raise PinlabModelError(
            f"{path} has no pinlab metadata, so it was not exported from this run's model; {fix}"
        )
    if meta.kind != expected.kind:
        raise PinlabModelError(f"{path} holds the {meta.kind}, not the {expected.kind}; {fix}")
    if meta.source_sha256 != expected.sha256:
        raise PinlabModelError(
            f"{path} was exported from another model (weights sha256 {meta.source_sha256[:12]}, "
            f"but {expected.source} is {expected.sha256[:12]}); {fix}"
        )
    precision = "int8" if runtime == "onnx-int8" else "fp32"
    if meta.precision != precision:
        raise PinlabModelError(
            f"{path} is {meta.precision}, but --runtime {runtime} reads {precision}; {fix}"
        )
    inputs = {
        i.name: (str(i.type), tuple(d if isinstance(d, int) else None for d in i.shape))
        for i in run.get_inputs()
    }
    if inputs != expected.inputs:
        raise PinlabModelError(
            f"{path} takes {_spec(inputs)}, but the model takes {_spec(expected.inputs)}; {fix}"
        )
    outputs = [(o.name, o.shape[-1] if o.shape else None) for o in run.get_outputs()]
    if outputs != [(EMBEDDINGS, expected.embedding_dim)]:
        raise PinlabModelError(
            f"{path} outputs {outputs}, not {expected.embedding_dim}-d {EMBEDDINGS}; {fix}"
        )
    return run, meta


def _need_dir(onnx_dir: Path | None, runtime: Runtime) -> Path:
    if onnx_dir is None:
        raise PinlabModelError(f"--runtime {runtime} needs the run's onnx/ folder")
    return onnx_dir


def _image_expected(checkpoint: Path, kind: OnnxKind) -> _Expected:
    if kind == "image-encoder":
        encoder = EncoderConfig.model_validate(load_checkpoint(checkpoint, ENCODER_KIND)["config"])
        size, dim = encoder.image_size, encoder.embedding_dim
    else:
        tower = AlignConfig.model_validate(load_alignment_checkpoint(checkpoint)["config"])
        size, dim = tower.image_size, MINILM_DIM
    return _Expected(
        kind,
        str(checkpoint),
        sha256_file(checkpoint),
        {IMAGES: ("tensor(uint8)", (None, size, size, 3))},
        dim,
    )


def _onnx_image(
    checkpoint: Path, kind: OnnxKind, runtime: Runtime, onnx_dir: Path, threads: int | None
) -> OnnxImageEncoder:
    expected = _image_expected(checkpoint, kind)
    run, meta = _open_checked(onnx_file(onnx_dir, kind, runtime), expected, runtime, threads)
    return OnnxImageEncoder(run, meta, runtime)


def load_image_encoder(
    checkpoint: Path,
    runtime: Runtime = "torch",
    onnx_dir: Path | None = None,
    threads: int | None = None,
) -> CNNEncoder | OnnxImageEncoder:
    """The run's image encoder on `runtime`: the checkpoint itself, or its ONNX export in
    `onnx_dir` (the run's onnx/), refused unless exported from this very checkpoint."""
    if runtime == "torch":
        return CNNEncoder.load(checkpoint)
    return _onnx_image(checkpoint, "image-encoder", runtime, _need_dir(onnx_dir, runtime), threads)


def load_text_encoder(
    runtime: Runtime = "torch", onnx_dir: Path | None = None, threads: int | None = None
) -> TextEncoder | OnnxTextEncoder:
    """MiniLM on `runtime`: sentence-transformers, or the export in `onnx_dir`."""
    if runtime == "torch":
        return TextEncoder()
    path = onnx_file(_need_dir(onnx_dir, runtime), "text-tower", runtime)
    axes = (None, None)
    expected = _Expected(
        "text-tower",
        f"the packaged {MINILM_ID}",
        minilm_sha256(),
        {INPUT_IDS: ("tensor(int64)", axes), ATTENTION_MASK: ("tensor(int64)", axes)},
        MINILM_DIM,
    )
    run, meta = _open_checked(path, expected, runtime, threads)
    if meta.max_seq_length != minilm_max_tokens():
        raise PinlabModelError(
            f"{path} truncates texts at {meta.max_seq_length} tokens, MiniLM here at "
            f"{minilm_max_tokens()}; re-export it with `pinlab export onnx --run "
            f"{path.parent.parent}`"
        )
    return OnnxTextEncoder(run, meta, runtime)


def load_image_text(
    checkpoint: Path,
    runtime: Runtime = "torch",
    onnx_dir: Path | None = None,
    threads: int | None = None,
) -> ImageTextModel | OnnxImageTextModel:
    """The run's image-text model on `runtime` (both towers from the same runtime)."""
    if runtime == "torch":
        return load_image_text_model(checkpoint)
    folder = _need_dir(onnx_dir, runtime)
    text = load_text_encoder(runtime, folder, threads)
    assert isinstance(text, OnnxTextEncoder)
    images = _onnx_image(checkpoint, "image-text-tower", runtime, folder, threads)
    return OnnxImageTextModel(images, text)
