"""The embedding map page and its point index (nearest point, id -> row) in numpy."""
