"""`pinlab embed`: every pin's image (and caption) as vectors, in Parquet shards.

Two engines compute the same shards. `local` runs them one after another in this process;
`ray` hands them to Ray Data (`map_batches` over a callable class, so each worker process loads
the encoder once) on a local Ray cluster it starts, or on an existing one (`address`). Both
call one `ShardEmbedder` on the same shards, whose encoder batches start at the same rows, so
the vectors are bit-identical: batch boundaries change float32 round-off, thread counts do
not (checked by the tests and `pinlab bench embed`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch

from pinlab_data import (
    EMBEDDINGS_MANIFEST,
    Dataset,
    EmbeddingKind,
    EmbeddingSet,
    EmbeddingsManifest,
    PinlabDataError,
    atomic_directory,
    check_writable,
    dataset_fingerprint,
    load_dataset,
    shard_name,
    write_embedding_shard,
    write_json_atomic,
)
from pinlab_models import CNNEncoder, TextEncoder, load_image_text_model
from pinlab_tasks.runs import RunLayout, utc_now

Engine = Literal["local", "ray"]
Say = Callable[[str], None]
DEFAULT_SHARD_ROWS = 4096
ENCODER_BATCH = 512
"""Images per encoder call inside a shard; fixed, so both engines cut the same batches."""
CONNECT_TIMEOUT_S = 5.0
INSTALL_RAY = (
    "the ray engine needs Ray, an optional extra: install it with `uv sync --extra distributed` "
    "(with `--all-packages --extra ...` for the other extras you use), or use --engine local"
)


@dataclass(frozen=True)
class EmbedJob:
    """What each worker needs to embed shards; small and picklable, sent to Ray actors."""

    data_dir: Path
    encoder: Path
    captions: bool
    threads: int
    batch_size: int = ENCODER_BATCH


class ShardEmbedder:
    """Loads the models once, then embeds one shard per call: a dict of numpy columns
    (`shard`, `pin_id`, `image_row`, `caption`) in; `shard`, `pin_id` and `image` (n, dim)
    out, with captions also `text` (n, 384; zeros where `has_text` is false) and `has_text`."""

    def __init__(self, job: EmbedJob) -> None:
        # One worker's share of the cores: 2 workers with 1 thread each on 2 cores, not 2 x 2.
        torch.set_num_threads(job.threads)
        self.encoder = CNNEncoder.load(job.encoder)
        self.text = TextEncoder() if job.captions else None
        self.images = load_dataset(job.data_dir).images
        self.batch_size = job.batch_size

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.images is not None  # the driver checked that the dataset has images
        rows = np.asarray(batch["image_row"], dtype=np.int64)
        out: dict[str, np.ndarray] = {
            "shard": np.asarray(batch["shard"], dtype=np.int64),
            "pin_id": np.asarray(batch["pin_id"], dtype=np.int64),
            "image": self.encoder.embed(np.asarray(self.images[rows]), self.batch_size),
        }
        if self.text is not None:
            captions = np.array([str(c) for c in batch["caption"]], dtype=object)
            has_text = np.array([bool(c.strip()) for c in captions], dtype=np.bool_)
            text = np.zeros((len(captions), self.text.embedding_dim), dtype=np.float32)
            if has_text.any():
                # Each distinct caption once, in sorted order: the same batches in every engine.
                distinct, inverse = np.unique(captions[has_text], return_inverse=True)
                text[has_text] = self.text.encode([str(c) for c in distinct])[inverse]
            out["text"], out["has_text"] = text, has_text
        return out


@dataclass(frozen=True)
class RayCluster:
    """A connection to a Ray cluster: the `ray` module, the address (or "local") and the
    seconds it took to start or join."""

    ray: Any
    address: str
    seconds: float


def embed_run(
    run: RunLayout,
    data: Path | None,
    *,
    engine: Engine,
    address: str | None,
    workers: int,
    threads: int,
    out: Path | None,
    shard_rows: int,
    say: Say,
) -> dict[str, Any]:
    """`pinlab embed`: the run's dataset unless `data`; `threads` is the CPU budget, split
    between Ray workers; the step is recorded in the run's run.json."""
    if address is not None and engine != "ray":
        raise PinlabDataError("--address names a Ray cluster to join; add --engine ray")
    if engine == "ray":
        if address not in (None, "auto"):
            check_reachable(address)  # at once, not after Ray's minutes of retries
        if address is not None and _have_ray_token():
            # Clusters use token authentication by default; Ray reads the mode when imported
            # and, joining, does not pick up the token it has itself.
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        import_ray()  # before any work: without Ray, say how to install it
    data_dir = data if data is not None else run.data_dir()
    per_worker = max(1, threads // workers) if engine == "ray" else threads
    result = embed_dataset(
        run,
        data_dir,
        engine=engine,
        out=out,
        address=address,
        workers=workers,
        threads=per_worker,
        shard_rows=shard_rows,
        say=say,
    )
    config = {key: result[key] for key in ("engine", "address", "workers", "out")}
    config |= {
        "data": str(Path(data_dir).resolve()),
        "dataset_fingerprint": dataset_fingerprint(Path(data_dir)),
        "threads_per_worker": per_worker,
        "shard_rows": shard_rows,
    }
    run.log_step("embed", config)
    return result


def embed_dataset(
    run: RunLayout,
    data_dir: Path,
    *,
    engine: Engine = "local",
    out: Path | None = None,
    address: str | None = None,
    workers: int = 2,
    threads: int = 1,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    captions: bool | None = None,
    cluster: RayCluster | None = None,
    say: Say = lambda _: None,
) -> dict[str, Any]:
    """Embed every pin of `data_dir` with the run's models into `out` (RUN/embeddings).

    Images go through the run's encoder (RUN/visual/encoder.pt); captions through the text
    tower of its image-text model (MiniLM, RUN/visual/image_text.pt) when it has one and
    `captions` is not False. `threads` is torch's per worker (`local`: the one process's).
    With `engine="ray"`, `cluster` reuses a connection (`ray_cluster`), else one is opened to
    `address` or a new local cluster of `workers * threads` CPUs, and closed at the end.
    The directory (empty, or embeddings: other folders are refused) is replaced whole, the
    manifest written last; an error or interrupt leaves the old one (or none) and no partial
    files. `seconds` counts from the engine's start (starting or joining a cluster here,
    `cluster_start_s`, inside it) to the manifest.
    """
    if workers < 1 or threads < 1 or shard_rows < 1:
        raise PinlabDataError(
            f"workers, threads and shard rows must be at least 1 (got {workers}, {threads}, "
            f"{shard_rows})"
        )
    out = Path(out) if out is not None else run.embeddings
    # Re-embedding replaces the last embeddings, never a folder embed did not write.
    check_writable(out.resolve(), overwrite=True, marker=EMBEDDINGS_MANIFEST)
    plan = _plan(run, data_dir, captions, threads, shard_rows)
    # No more Ray workers than shards: an idle one would only cost its start-up.
    workers = min(workers, max(1, len(plan.shards))) if engine == "ray" else 1
    own_cluster = engine == "ray" and cluster is None
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if engine == "ray":
            if cluster is None:
                cluster = stack.enter_context(ray_cluster(address, workers * threads, say))
            say(f"embedding {plan.pins} pins on Ray ({workers} workers x {threads} threads)")
            batches = _ray_batches(cluster, plan, workers)
        else:
            say(f"embedding {plan.pins} pins here ({threads} threads)")
            batches = _local_batches(plan)
        config = {
            "engine": engine,
            "address": cluster.address if engine == "ray" and cluster is not None else None,
            "workers": workers,
            "threads_per_worker": threads,
            "shard_rows": shard_rows,
            "batch_size": plan.job.batch_size,
        }
        first: dict[str, float] = {}
        manifest = _write(out, _first_timed(batches, start, first), plan, config)
    seconds = time.perf_counter() - start
    return {
        "out": str(out),
        **config,
        "cluster_start_s": cluster.seconds if own_cluster and cluster is not None else None,
        "pins": plan.pins,
        "shards": len(plan.shards),
        "sets": {k: {"count": v.count, "dim": v.dim} for k, v in manifest.sets.items()},
        "text": plan.note,
        "seconds": seconds,
        "images_per_s": plan.pins / seconds if seconds > 0 else None,
        "first_shard_s": first.get("seconds"),
        "first_shard_rows": int(first.get("rows", 0)),
    }


def _first_timed(
    batches: Iterator[dict[str, np.ndarray]], start: float, first: dict[str, float]
) -> Iterator[dict[str, np.ndarray]]:
    """The batches, noting in `first` when the first arrived and its rows (start-up's end)."""
    for batch in batches:
        if not first:
            first.update(seconds=time.perf_counter() - start, rows=len(batch["pin_id"]))
        yield batch


@dataclass(frozen=True)
class _Plan:
    """A checked job: what every worker gets, the shards, and what the manifest will say."""

    job: EmbedJob
    dataset: Dataset
    shards: list[pa.Table]
    note: str
    encoder_id: str
    image_dim: int

    @property
    def pins(self) -> int:
        return int(self.dataset.pins.num_rows)


def _plan(
    run: RunLayout, data_dir: Path, captions: bool | None, threads: int, shard_rows: int
) -> _Plan:
    """Everything checked before any engine starts: the models, the images and their size."""
    if not run.encoder.is_file():
        raise PinlabDataError(
            f"run {run.root} has no image encoder ({run.encoder}); train one with "
            f"`pinlab train encoder --data DIR --run {run.root}` or `pinlab demo`"
        )
    ds = load_dataset(data_dir)
    rows = ds.pins.column("image_row")
    if ds.images is None or rows.null_count:
        raise PinlabDataError(
            f"{data_dir} lacks packed images (images.npy, image_row) for some pins; embedding "
            f"needs them: run `pinlab data validate {data_dir}`"
        )
    encoder = CNNEncoder.load(run.encoder)
    size = encoder.image_size
    if ds.images.shape[1:3] != (size, size):
        raise PinlabDataError(
            f"{data_dir}'s images are {ds.images.shape[1]}x{ds.images.shape[2]} but the run's "
            f"encoder takes {size}x{size}; embed a dataset of the encoder's image size"
        )
    aligned = run.image_text.is_file()
    if captions is False:
        note = "captions not embedded (images only)"
    elif aligned:
        load_image_text_model(run.image_text)  # refuses a model aligned to another text model
        captions_text = np.asarray(ds.pins.column("caption").to_pylist(), dtype=str)
        empty = int(np.sum(np.char.str_len(np.char.strip(captions_text)) == 0))
        note = f"captions through the run's text tower ({TextEncoder.model_id})" + (
            f"; {empty} pins with an empty caption have no text vector" if empty else ""
        )
    else:
        note = (
            f"captions not embedded: run {run.root} has no image-text model; "
            f"train one with `pinlab train align --run {run.root}`"
        )
    job = EmbedJob(
        data_dir=Path(data_dir).resolve(),
        encoder=run.encoder.resolve(),
        captions=aligned and captions is not False,
        threads=threads,
    )
    return _Plan(
        job, ds, _shard_tables(ds, shard_rows), note, encoder.model_id, encoder.embedding_dim
    )


def _shard_tables(ds: Dataset, shard_rows: int) -> list[pa.Table]:
    """The pins table's rows to embed, cut into consecutive shards (each with its number)."""
    pins = ds.pins.select(["pin_id", "image_row", "caption"])
    tables = []
    for index, start in enumerate(range(0, pins.num_rows, shard_rows)):
        part = pins.slice(start, shard_rows)
        shard = pa.array(np.full(part.num_rows, index, dtype=np.int64))
        tables.append(part.add_column(0, "shard", shard).combine_chunks())
    return tables


def _local_batches(plan: _Plan) -> Iterator[dict[str, np.ndarray]]:
    torch_threads = torch.get_num_threads()
    embedder = ShardEmbedder(plan.job)
    try:
        for table in plan.shards:
            yield embedder(
                {
                    name: column.to_numpy()
                    for name, column in zip(table.column_names, table.columns, strict=True)
                }
            )
    finally:
        torch.set_num_threads(torch_threads)


def _write(
    out: Path, batches: Iterator[dict[str, np.ndarray]], plan: _Plan, config: dict[str, Any]
) -> EmbeddingsManifest:
    """Each embedded shard to its files as it arrives (in any order), the manifest last."""
    kinds: list[EmbeddingKind] = ["image", "text"] if plan.job.captions else ["image"]
    counts = dict.fromkeys(kinds, 0)
    done: set[int] = set()
    with atomic_directory(out) as tmp:
        for batch in batches:
            index = int(batch["shard"][0])
            expected = plan.shards[index].num_rows
            if len(batch["pin_id"]) != expected or index in done:
                raise RuntimeError(
                    f"shard {index} came back as {len(batch['pin_id'])} rows, not one batch "
                    f"of {expected}: the engine split or repeated it"
                )
            done.add(index)
            write_embedding_shard(tmp / shard_name("image", index), batch["pin_id"], batch["image"])
            counts["image"] += expected
            if plan.job.captions:
                keep = batch["has_text"]
                text = np.ascontiguousarray(batch["text"][keep], dtype=np.float32)
                write_embedding_shard(tmp / shard_name("text", index), batch["pin_id"][keep], text)
                counts["text"] += int(keep.sum())
        if len(done) != len(plan.shards):
            raise RuntimeError(f"{len(plan.shards) - len(done)} shard(s) never came back")
        sets = {
            kind: EmbeddingSet(
                kind=kind,
                model_id=plan.encoder_id if kind == "image" else TextEncoder.model_id,
                dim=plan.image_dim if kind == "image" else TextEncoder.embedding_dim,
                count=counts[kind],
                shards=[shard_name(kind, i) for i in range(len(plan.shards))],
                note="pin images through the run's encoder" if kind == "image" else plan.note,
            )
            for kind in kinds
        }
        manifest = EmbeddingsManifest(
            engine=config["engine"],
            created=utc_now(),
            dataset=str(plan.dataset.root.resolve()),
            dataset_fingerprint=dataset_fingerprint(plan.dataset.root),
            count=plan.pins,
            sets=sets,
            config=config,
        )
        write_json_atomic(tmp / EMBEDDINGS_MANIFEST, manifest)
    return manifest


def _have_ray_token() -> bool:
    return bool(
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    )


def import_ray() -> Any:
    """The `ray` module with Ray Data, or one line saying how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's own deprecation notices at import
            ray = importlib.import_module("ray")
            importlib.import_module("ray.data")
    except ImportError:
        raise PinlabDataError(INSTALL_RAY) from None
    return ray


@contextlib.contextmanager
def ray_cluster(address: str | None, cpus: int, say: Say = lambda _: None) -> Iterator[RayCluster]:
    """Join the Ray cluster at `address` (HOST:PORT, ray://HOST:PORT or auto), or start a local
    one of `cpus` CPUs on the loopback interface; disconnect (and stop a local one) at the end.

    An address that does not answer within CONNECT_TIMEOUT_S raises PinlabDataError at once,
    rather than Ray's retries for minutes.
    """
    ray = import_ray()
    if ray.is_initialized():
        raise PinlabDataError("this process is already connected to Ray; run one embed at a time")
    start = time.perf_counter()
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,  # stdout stays the command's own (one JSON document)
        "logging_level": logging.WARNING,
        "configure_logging": False,
    }
    if address is None:
        say(f"starting a local Ray cluster ({cpus} CPUs)")
        # Ray runs workers at nice 15; on a shared machine they would then wait behind every
        # other process, where the local engine (nice 0) would not.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # Ray's notice that a new local cluster uses token authentication (its default).
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
        # address="local": always a new cluster; without it Ray joins whatever cluster
        # /tmp/ray/ray_current_cluster names, even a dead one a killed run left behind.
        ray.init(address="local", num_cpus=cpus, _node_ip_address="127.0.0.1", **options)
    else:
        if address != "auto":
            check_reachable(address)
        say(f"joining the Ray cluster at {address}")
        try:
            ray.init(address=address, **options)
        except ConnectionError as exc:
            raise PinlabDataError(
                f"cannot join a Ray cluster at {address!r} ({exc}); pass a running cluster's "
                "HOST:PORT as --address (a cluster with token authentication also needs its "
                "token: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN, or ~/.ray/auth_token), or leave "
                "--address out to start a local cluster"
            ) from None
    _quiet_ray_data(ray)
    try:
        yield RayCluster(ray, address or "local", time.perf_counter() - start)
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise PinlabDataError unless a TCP connection to `address` opens within `timeout`."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise PinlabDataError(
            f"--address {address!r} is not HOST:PORT; give the head node's address, e.g. "
            "127.0.0.1:6379 (or ray://HOST:10001, or auto)"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise PinlabDataError(
            f"no Ray cluster answers at {address} ({reason} within {timeout:g} s); start one "
            "with `ray start --head` and pass its HOST:PORT as --address, or leave --address "
            "out to start a local cluster"
        ) from None


def _quiet_ray_data(ray: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Ray Data's own deprecated defaults, set in __init__
        context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Errors still raise; its notices (progress bars off, execution plans) are not ours to show.
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _ray_batches(cluster: RayCluster, plan: _Plan, workers: int) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data over the shards: one block per shard, and `batch_size=None` makes each block
    one call of a `ShardEmbedder` actor (`workers` of them, `threads` CPUs each)."""
    if not plan.shards:
        return iter(())
    dataset = cluster.ray.data.from_arrow(plan.shards).map_batches(
        ShardEmbedder,
        fn_constructor_args=(plan.job,),
        batch_size=None,
        batch_format="numpy",
        compute=cluster.ray.data.ActorPoolStrategy(size=workers),
        num_cpus=plan.job.threads,
    )
    batches: Iterator[dict[str, np.ndarray]] = dataset.iter_batches(
        batch_size=None, batch_format="numpy"
    )
    return batches
