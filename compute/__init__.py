"""Everything that imports torch: data sources, models, the CAM methods and their checks, the compute job.

Sub-packages, lowest first: ``datasets`` and ``model`` (inputs), ``methods`` (maps and the checks on
them), ``analysis`` (numbers over a whole run), ``pipeline`` (the job), ``cli`` (argparse front ends)."""
