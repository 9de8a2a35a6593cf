"""Tests of the xaidash command, the packaging and the static checks."""
