"""Imports every command module, so each registers its commands on `app`."""

from __future__ import annotations
