"""TOML text for the starter rules file and the meters' tables: strings and bare keys."""

from __future__ import annotations

import json
import re


def toml_str(value: str) -> str:
    # A JSON string is a TOML basic string (without non-ASCII escapes to get wrong).
    return json.dumps(value, ensure_ascii=False)


def key_from_name(name: str, sep: str = "_") -> str:
    """A TOML bare key / rule id from a name: lower case, runs of anything else as `sep`."""
    return re.sub(r"[^a-z0-9]+", sep, name.lower()).strip(sep)[:60]
