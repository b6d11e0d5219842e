"""Near-duplicate images: perceptual hashes bucketed by band, linked by Hamming distance.

Two images whose 64-bit pHashes differ in at most d bits agree exactly on at least one of
d + 1 disjoint bands of bits (pigeonhole), so only images sharing a band value are compared:
no all-pairs scan. Linked pairs can be confirmed by an embedding similarity supplied by the
caller (pinlab_data does not know the encoders), then grouped into clusters.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import imagehash
import numpy as np
import numpy.typing as npt
from PIL import Image

from pinlab_data._store import DUPLICATES_FILE, load_dataset, write_json_atomic
from pinlab_data.contracts import (
    DedupeReport,
    DuplicateCluster,
    Float32Array,
    ImageArray,
    Int64Array,
    PinlabDataError,
)

HASH_BITS = 64
MAX_DISTANCE = 16
"""Beyond this, bands get so narrow that bucketing compares nearly every pair."""
HashArray = npt.NDArray[np.uint64]
PairSimilarity = Callable[[Int64Array], Float32Array]
"""Given (P, 2) positions in the pins table, the embedding cosine of each pair."""


def perceptual_hashes(images: ImageArray) -> HashArray:
    """The 64-bit pHash (DCT of the 32x32 grey image) of each packed image."""
    out = np.empty(len(images), dtype=np.uint64)
    for i in range(len(images)):
        bits = imagehash.phash(Image.fromarray(np.asarray(images[i]))).hash.ravel()
        out[i] = np.packbits(bits).view(">u8")[0]
    return out


def color_thumbnails(images: ImageArray, side: int = 8) -> Float32Array:
    """Each image box-averaged to side x side RGB: the colours pHash ignores."""
    out = np.empty((len(images), side, side, 3), dtype=np.float32)
    for i in range(len(images)):
        small = Image.fromarray(np.asarray(images[i])).resize((side, side), Image.Resampling.BOX)
        out[i] = np.asarray(small, dtype=np.float32)
    return out


def hamming(a: HashArray, b: HashArray) -> Int64Array:
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def candidate_pairs(hashes: HashArray, max_distance: int) -> tuple[Int64Array, Int64Array]:
    """Pairs (i < j) with Hamming distance <= max_distance, and their distances."""
    _check_distance(max_distance)
    edges = np.linspace(0, HASH_BITS, max_distance + 2).astype(np.uint64)
    found: list[Int64Array] = []
    for low, high in itertools.pairwise(edges):
        mask = np.uint64((1 << int(high - low)) - 1)
        keys = (hashes >> low) & mask
        order = np.argsort(keys, kind="stable")
        starts = np.flatnonzero(np.diff(keys[order], prepend=~keys[order][:1]))
        sizes = np.diff(np.append(starts, len(order)))
        for start, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
            members = np.sort(order[start : start + size])
            i, j = np.triu_indices(size, k=1)
            found.append(np.stack([members[i], members[j]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.int64)
    pairs = np.unique(np.concatenate(found), axis=0).astype(np.int64)
    distances = hamming(hashes[pairs[:, 0]], hashes[pairs[:, 1]])
    keep = distances <= max_distance
    return pairs[keep], distances[keep]


def cluster_pairs(n: int, pairs: Int64Array) -> list[Int64Array]:
    """Connected components of the pair graph with more than one member, each sorted."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(n)], dtype=np.int64)
    groups: dict[int, list[int]] = {}
    for i in np.unique(pairs):
        groups.setdefault(int(roots[i]), []).append(int(i))
    return [np.array(sorted(g), dtype=np.int64) for g in groups.values()]


def dedupe_dataset(
    root: Path,
    *,
    max_distance: int = 6,
    max_color_diff: float = 12.0,
    similarity: PairSimilarity | None = None,
    min_cosine: float | None = None,
    model_id: str | None = None,
    out: Path | None = None,
) -> DedupeReport:
    """Cluster a dataset's near-duplicate images and write the report to `out` (atomically).

    A hash pair links only if its 8x8 colour thumbnails differ by at most `max_color_diff` on
    average (0-255): the same shape in other colours hashes alike. With `similarity`, it also
    needs a cosine of at least `min_cosine`.
    `out` defaults to the dataset's `duplicates.json`.
    """
    _check_distance(max_distance)
    if (similarity is None) != (min_cosine is None):
        raise PinlabDataError("give both a similarity and min_cosine to confirm pairs, or neither")
    if not 0 <= max_color_diff <= 255:
        raise PinlabDataError(f"max colour difference {max_color_diff} is not in 0..255")
    if min_cosine is not None and not -1.0 <= min_cosine <= 1.0:
        raise PinlabDataError(f"min cosine {min_cosine} is not in [-1, 1]; pass e.g. 0.9")
    ds = load_dataset(root)
    rows = ds.pins.column("image_row")
    if ds.images is None or rows.null_count == ds.pins.num_rows:
        raise PinlabDataError(
            f"{root} has no packed images to compare; load images with `pinlab data load images`"
        )
    row_of = np.asarray(rows.fill_null(-1).to_numpy(), dtype=np.int64)
    with_image = np.flatnonzero(row_of >= 0)
    images = ds.images[row_of[with_image]]
    local, distances = candidate_pairs(perceptual_hashes(images), max_distance)
    hash_pairs = len(local)
    if hash_pairs:
        thumbs = color_thumbnails(images[np.unique(local)])
        at = np.searchsorted(np.unique(local), local)
        diff = np.abs(thumbs[at[:, 0]] - thumbs[at[:, 1]]).mean(axis=(1, 2, 3))
        local, distances = local[diff <= max_color_diff], distances[diff <= max_color_diff]
    pairs = with_image[local]  # positions in the pins table
    cosines: Float32Array | None = None
    if similarity is not None and min_cosine is not None and len(pairs):
        cosines = np.asarray(similarity(pairs), dtype=np.float32)
        if cosines.shape != (len(pairs),):
            raise PinlabDataError(f"similarity gave {cosines.shape} values for {len(pairs)} pairs")
        keep = cosines >= min_cosine
        pairs, distances, cosines = pairs[keep], distances[keep], cosines[keep]
    confirmed = len(pairs)
    pin_ids = ds.pin_ids()
    clusters = []
    for members in cluster_pairs(ds.pins.num_rows, pairs):
        linked = np.isin(pairs[:, 0], members)
        clusters.append(
            DuplicateCluster(
                pin_ids=sorted(int(p) for p in pin_ids[members]),
                max_hash_distance=int(distances[linked].max()),
                min_cosine=None if cosines is None else round(float(cosines[linked].min()), 4),
            )
        )
    clusters.sort(key=lambda c: (-len(c.pin_ids), c.pin_ids[0]))
    target = out or Path(root) / DUPLICATES_FILE
    report = DedupeReport(
        dataset=str(root),
        max_distance=max_distance,
        max_color_diff=max_color_diff,
        min_cosine=min_cosine,
        model_id=model_id,
        num_images=len(with_image),
        hash_pairs=hash_pairs,
        candidate_pairs=len(local),
        confirmed_pairs=confirmed,
        duplicates=sum(len(c.pin_ids) - 1 for c in clusters),
        clusters=clusters,
        report=str(target),
    )
    write_json_atomic(target, report)
    return report


def _check_distance(max_distance: int) -> None:
    if not 0 <= max_distance <= MAX_DISTANCE:
        raise PinlabDataError(
            f"max distance {max_distance} is out of range; pass 0..{MAX_DISTANCE} bits of 64"
        )
