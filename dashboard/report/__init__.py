"""What leaves the dashboard as a file: the self-contained HTML (and PDF) run report, the table and
overlay exports, and the ``xaidash report`` / ``xaidash export`` commands."""
