"""Which old order-workflow versions a run needs, read from its history: every recorded
history of every version (tests/histories/order_credits_v*.json), whose version its file
name says, classified by what it went through."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory

from polar_credits.order_versions import OLD_VERSIONS, versions_needed

HISTORIES = sorted((Path(__file__).parent / "histories").glob("order_credits_v*.json"))


def expected(name: str) -> set[str]:
    """v4 needs nothing; v1-v3 runs all started on v3's decision path; a v1 run that had
    grants went on to the first release's ingest; a v2 run whose ingest completed went on
    without the period check."""
    match = re.match(r"order_credits_v(\d)_(.*)\.json", name)
    assert match, name
    version, case = int(match.group(1)), match.group(2)
    if version == 4:
        return set()
    needed = {"v3"}
    if version == 1 and case != "no_rule":
        needed.add("v1")
    if version == 2 and case not in ("no_rule", "rejected"):
        needed.add("v2")
    return needed


def test_every_version_has_recorded_histories() -> None:
    versions = {re.match(r"order_credits_(v\d)_", p.name).group(1) for p in HISTORIES}  # type: ignore[union-attr]
    assert versions == {v.name for v in OLD_VERSIONS} | {"v4"}


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
def test_a_recorded_run_needs_the_code_it_went_through(path: Path) -> None:
    history = WorkflowHistory.from_json("order", json.loads(path.read_text()))
    assert versions_needed(history.events) == expected(path.name)
