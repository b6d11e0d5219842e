"""Synthetic ratings in the MovieLens-20M file format, to measure loaders at full size.

The files are written in batches, so making 20 million rows takes about as little memory as
making a thousand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from pinlab_data._store import make_directory
from pinlab_data.contracts import PinlabDataError

ML20M_ROWS, ML20M_USERS, ML20M_MOVIES = 20_000_263, 138_493, 27_278
FIRST_TIME, LAST_TIME = 789_652_009, 1_427_784_002
"""The span of MovieLens-20M's timestamps."""
GENRES = ("Action", "Adventure", "Animation", "Comedy", "Crime", "Drama", "Horror", "Sci-Fi")
BATCH_ROWS = 1 << 20


def write_movielens_like(folder: Path, rows: int, seed: int = 0) -> Path:
    """Write `folder/ratings.csv` and `folder/movies.csv` as MovieLens-20M lays them out.

    Users and movies scale with `rows` as in MovieLens-20M (about 144 ratings per user);
    users come in ascending order, movie popularity is skewed, ratings are half stars.
    The same (rows, seed) gives the same bytes.
    """
    if rows < 1:
        raise PinlabDataError(f"rows must be at least 1, got {rows}")
    make_directory(folder)
    num_users = max(1, round(rows * ML20M_USERS / ML20M_ROWS))
    num_movies = max(1, min(ML20M_MOVIES, rows // 10))
    rng = np.random.default_rng(seed)
    stars = pa.array([f"{k / 2:.1f}" for k in range(1, 11)], pa.string())
    star_p = np.array([1, 3, 2, 7, 4, 20, 12, 27, 8, 16], dtype=np.float64)
    schema = pa.schema(
        [
            ("userId", pa.int64()),
            ("movieId", pa.int64()),
            ("rating", pa.string()),
            ("timestamp", pa.int64()),
        ]
    )
    options = pcsv.WriteOptions(include_header=False, quoting_style="none")
    with (folder / "ratings.csv").open("wb") as sink:
        sink.write(b"userId,movieId,rating,timestamp\n")
        with pcsv.CSVWriter(sink, schema, write_options=options) as writer:
            for start in range(0, rows, BATCH_ROWS):
                n = min(BATCH_ROWS, rows - start)
                position = np.arange(start, start + n, dtype=np.int64)
                movies = (num_movies * rng.random(n) ** 3).astype(np.int64) + 1
                batch = pa.record_batch(
                    [
                        position * num_users // rows + 1,
                        movies,
                        stars.take(pa.array(rng.choice(10, n, p=star_p / star_p.sum()))),
                        rng.integers(FIRST_TIME, LAST_TIME, n),
                    ],
                    schema=schema,
                )
                writer.write_batch(batch)
    ids = np.arange(1, num_movies + 1)
    genres = [
        "|".join(GENRES[(i + k) % len(GENRES)] for k in range(1 + i % 3)) for i in ids.tolist()
    ]
    movies_table = pa.table(
        {
            "movieId": ids,
            "title": [f"Movie {i}, Part {i % 7} ({1930 + i % 90})" for i in ids.tolist()],
            "genres": genres,
        }
    )
    pcsv.write_csv(movies_table, folder / "movies.csv")
    return folder
