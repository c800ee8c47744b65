"""Ids the service puts in a Polar URL path. polar-sdk formats path parameters into the URL
as they are (`url.format(**path_params)`), so `../customers/x` or `x?y=1#` would reach another
path or add a query: every id is percent-encoded to stay one path segment."""

from __future__ import annotations

from urllib.parse import quote


def path_segment(value: str) -> str:
    """`value` as one path segment: `/`, `?`, `#`, `%` and every non-ASCII byte encoded, and
    dots too, so `.` and `..` are never read as the current or parent directory."""
    return quote(value, safe="").replace(".", "%2E")
