"""Arrow schemas of the method comparison tables (issue 22): ``method_stats`` and ``method_ranking``,
computed by the compute job's global phase from the per-image trust tables.

They live beside :mod:`xaidash.store.schema` (which registers them in ``TABLES`` and documents
them in ``docs/STORE.md`` like every other table) only to keep that module under the 700-line
limit; the field helper is repeated here because importing schema.py's would be a cycle.
"""

from __future__ import annotations

import pyarrow as pa


def field(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    """A field whose metadata carries its documentation (as schema.py's fields do)."""
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


_RUN_ID = field("run_id", pa.string(), "Run this row belongs to (directory name under runs/).", False)

METHOD_STATS = pa.schema(
    [
        _RUN_ID,
        field("method", pa.string(), "Method (or baseline map 'random' / 'centre') the row describes.",
              False),
        field("other", pa.string(), "Null: the row is the method's own mean and CI. Set: the row is the "
              "paired difference method - other on the images both have."),
        field("metric", pa.string(), "Per-image score: 'drop', 'increase', 'deletion_auc', "
              "'insertion_auc', 'ins_del' (insertion - deletion AUC), 'road_morf', 'road_lerf' (means "
              "over the removal fractions), 'road_gap' (road_lerf - road_morf).", False),
        field("n", pa.int64(), "Images the mean is over (for a pair: the images both methods have).",
              False),
        field("mean", pa.float64(), "Mean over the images (for a pair: mean of method - other)."),
        field("ci_low", pa.float64(), "Lower end of the 95 % percentile bootstrap CI (null below 2 "
              "images)."),
        field("ci_high", pa.float64(), "Upper end of the 95 % percentile bootstrap CI."),
        field("p_value", pa.float64(), "Pairs only: two-sided paired bootstrap p-value of a zero mean "
              "difference, 2 x the smaller share of resampled mean differences on either side of 0 "
              "(capped at 1; 1 when every difference is 0)."),
        field("resamples", pa.int32(), "Bootstrap resamples of the images.", False),
        field("seed", pa.int64(), "Seed of the resampling (with the metric; methods on the same images "
              "share one resampling, a pair involving a subset method gets its own).", False),
    ]
)

METHOD_RANKING = pa.schema(
    [
        _RUN_ID,
        field("method", pa.string(), "Method.", False),
        field("position", pa.int32(), "1-based place in the order of the ranking rule (docs/METHODS.md).",
              False),
        field("tier", pa.int32(), "1-based group: methods sharing a tier are indistinguishable (their "
              "paired tests do not separate them at alpha).", False),
        field("level", pa.int32(), "Gate: 0 passes the sanity check and beats both baselines, 1 passes "
              "the sanity check only, 2 fails it.", False),
        field("passes_sanity", pa.bool_(), "Sanity verdict (null: the run has no sanity check for it)."),
        field("sanity_block", pa.string(), "Block at whose randomisation the mean Spearman correlation "
              "first falls below the pass line (null when it never does)."),
        field("beats_random", pa.bool_(), "Beats the random map (null: no baseline scores)."),
        field("beats_centre", pa.bool_(), "Beats the centre Gaussian (null: no baseline scores)."),
        field("primary", pa.string(), "Metric the tier is ordered by first: 'road_gap', or 'ins_del' when "
              "the run has no ROAD scores.", False),
        field("tie_metric", pa.string(), "Metric of the test that left the method in its tier's top's "
              "tier (null for a tier's top)."),
        field("tie_p", pa.float64(), "p-value of that test against the tier's top (null for the top)."),
        field("alpha", pa.float64(), "Significance level of the paired tests.", False),
        field("reason", pa.string(), "Why the method is where it is, in words.", False),
    ]
)
