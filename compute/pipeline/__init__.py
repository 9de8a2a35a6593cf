"""The compute job: configuration, the plan, the per-chunk function (the unit of work), precision policy,
the global phase, shards and Ray, and the one-image path of the dashboard's explain page."""
