"""A run's light columns: what every gallery page, aggregate and map point needs, one row per val
image in image_id order (``ord`` = its rank).

Two builders of the same rows: :func:`light_table` reads them with Arrow when the files are laid
out as the writer lays them out, and :func:`light_table_sql` is the SQL join for any other
layout (any row order, duplicate ids). The reader's run cache keeps the result
(:mod:`xaidash.store.read.cache`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xaidash.store.read.align import aligned_rows, bounds_match, sorted_unique, take_aligned
from xaidash.store.read.catalog import RunEntry
from xaidash.store.schema import CACHED_PREDICTION_COLUMNS


def light_table(e: RunEntry, methods: Sequence[str]) -> pa.Table | None:
    """The rows of ``cache.l_<h>`` built with Arrow (no SQL join), or None when the files are not
    laid out as the writer lays them out (then the SQL join builds the table).

    Every run file is sorted by image_id (predictions; embeddings by split then image_id;
    faithfulness by image_id then method), so the light columns line up row for row with the
    predictions: one columnar read per file and no join. Left out (null), because they are
    read per image when needed: probabilities (the image page reads one row group) and the
    image metadata (``source``, ``width``, ``height``: the dataset's image parts, hundreds of
    small-row-group files at 1M images, read through the row-group index). At 1M images this
    is ~0.6 s where the SQL join takes ~10 s.
    """
    pcols = [c for c in CACHED_PREDICTION_COLUMNS if c != "probabilities"]
    # names and splits are a few distinct strings: decoded as dictionaries, not 1M Python-free copies
    names = ["split", "label_name", "pred_name"]
    pred = pq.read_table(e.file("predictions"), columns=pcols, read_dictionary=names).select(pcols)
    pred = pred.cast(
        pa.schema([pa.field(f.name, pa.string() if f.name in names else f.type) for f in pred.schema])
    )
    ids = pred.column("image_id").combine_chunks()
    if not sorted_unique(ids):
        return None
    n = len(ids)
    out = pred.add_column(0, "ord", pa.array(np.arange(1, n + 1, dtype=np.int64)))
    out = out.add_column(
        out.schema.get_field_index("correct"), "probabilities", pa.nulls(n, pa.list_(pa.float32()))
    )
    # embeddings: sorted by split then image_id, so the val rows are one run of rows; their ids
    # are checked by row-group statistics, not decoded (decoding them would be ~40 % of the time)
    ef = e.file("embeddings")
    split = pq.read_table(ef, columns=["split"], read_dictionary=["split"]).column("split").combine_chunks()
    is_val = pc.equal(split.dictionary, "val").to_numpy(zero_copy_only=False)
    val_rows: npt.NDArray[np.intp] = (
        np.flatnonzero(is_val[split.indices.to_numpy(zero_copy_only=False)])
        if len(split)
        else np.zeros(0, np.intp)
    )
    v0 = int(val_rows[0]) if len(val_rows) else len(split)
    xy = None
    if len(val_rows) == n and (n == 0 or int(val_rows[-1]) == v0 + n - 1) and bounds_match(ef, ids, v0, 1):
        xy = pq.read_table(ef, columns=["x", "y"]).slice(v0, n)
        at = np.arange(n, dtype=np.int64)
    if xy is None:
        emb = pq.read_table(ef, columns=["image_id", "split", "x", "y"], filters=[("split", "=", "val")])
        at = aligned_rows(ids, emb.column("image_id").combine_chunks(), n)
        xy = emb
    for c in ("x", "y"):
        out = out.append_column(c, take_aligned(xy.column(c).combine_chunks(), at, pa.float32()))
    out = out.append_column("source", pa.nulls(n, pa.string()))
    out = out.append_column("width", pa.nulls(n, pa.int32()))
    out = out.append_column("height", pa.nulls(n, pa.int32()))
    if methods:
        ff = e.file("faithfulness")
        cols = ["method", "deletion_auc", "insertion_auc"]
        f = pq.read_table(ff, columns=cols, read_dictionary=["method"])
        codes = f.column("method").combine_chunks()
        dictionary = codes.dictionary.to_pylist()
        index = codes.indices.to_numpy(zero_copy_only=False)
        k = len(dictionary)
        # sorted by (image_id, method): k rows per image, methods in the same order each time
        regular = (
            k > 0
            and len(index) == n * k
            and bool(np.all(index.reshape(n, k) == np.sort(index[:k])))
            and bounds_match(ff, ids, 0, k)
        )
        if not regular:  # read the ids and line the rows up by them
            f = pq.read_table(ff, columns=["image_id", *cols], read_dictionary=["method"])
        score_all = pc.subtract(f.column("insertion_auc"), f.column("deletion_auc")).combine_chunks()
        for m in methods:
            if m not in dictionary:
                out = out.append_column(f"faith_{m}", pa.nulls(n, pa.float32()))
                continue
            mi = dictionary.index(m)
            if regular:
                col = int(np.flatnonzero(np.sort(index[:k]) == mi)[0])
                score = score_all.take(pa.array(np.arange(n, dtype=np.int64) * k + col))
                out = out.append_column(f"faith_{m}", score.cast(pa.float32()))
                continue
            keep = pa.array(index == mi)
            fids = f.column("image_id").filter(keep).combine_chunks()
            if not sorted_unique(fids):
                return None  # two rows of one (image, method): the SQL's max() decides
            score = score_all.filter(keep)
            at = aligned_rows(ids, fids, n)
            out = out.append_column(f"faith_{m}", take_aligned(score, at, pa.float32()))
    return out


def light_table_sql(
    e: RunEntry, name: str, methods: Sequence[str], small_head: bool, image_glob: str | None
) -> tuple[str, list[object]]:
    """The statement (and its parameters) creating the table ``name`` (a trusted identifier) with
    the rows of :func:`light_table` by a SQL join of the files; ``image_glob`` is the
    ``read_parquet`` glob of the run's images parts (None when there are none). Unlike the Arrow
    path it also fills ``source``, ``width``, ``height`` and, for ``small_head``, probabilities."""
    faith_cols = ", ".join(
        f'max(insertion_auc - deletion_auc) FILTER (WHERE method = ?) AS "faith_{m}"' for m in methods
    )
    probs = "p.probabilities" if small_head else "NULL::FLOAT[] AS probabilities"
    pred_cols = ", ".join(probs if c == "probabilities" else f"p.{c}" for c in CACHED_PREDICTION_COLUMNS)
    img_cte = (
        "SELECT image_id, any_value(source) AS source, any_value(width) AS width, "
        "any_value(height) AS height FROM read_parquet(?) WHERE split = 'val' GROUP BY image_id"
        if image_glob
        else "SELECT NULL::VARCHAR AS image_id, NULL::VARCHAR AS source, NULL::INTEGER AS width, "
        "NULL::INTEGER AS height WHERE false"
    )
    f_cte = (
        f"SELECT image_id, {faith_cols} FROM read_parquet(?) GROUP BY image_id"
        if methods
        else "SELECT NULL::VARCHAR AS image_id WHERE false"
    )
    params: list[object] = [str(e.file("embeddings"))]
    if image_glob:
        params.append(image_glob)
    if methods:
        params += [*methods, str(e.file("faithfulness"))]
    params.append(str(e.file("predictions")))
    query = f"""
            CREATE TABLE {name} AS
            WITH xy AS (SELECT image_id, x, y FROM read_parquet(?) WHERE split = 'val'),
                 i AS ({img_cte}),
                 f AS ({f_cte})
            SELECT row_number() OVER (ORDER BY p.image_id) AS ord, {pred_cols},
                   xy.x, xy.y, i.source, i.width, i.height, f.* EXCLUDE (image_id)
            FROM read_parquet(?) p
            LEFT JOIN xy USING (image_id) LEFT JOIN i USING (image_id) LEFT JOIN f USING (image_id)
            ORDER BY p.image_id
            """
    return query, params
