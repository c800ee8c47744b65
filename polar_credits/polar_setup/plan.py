"""What `polar-credits setup` asks for and plans: the request, the plan and its steps, the
meters and the webhook endpoint it finds or makes."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from polar.v2026_10.outputs import Product

from polar_credits.polar_setup.toml_text import toml_str
from polar_credits.rules import RulesFile

Area = Literal["token", "meter", "products", "webhook", "rules_file"]
Action = Literal["ok", "create", "update", "keep", "warn", "problem", "skip"]
CHANGES: frozenset[str] = frozenset({"create", "update"})


@dataclass
class Step:
    area: Area
    action: Action
    detail: str

    def as_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass
class MeterSpec:
    """A meter as the rules file names it: `[meters.<key>]` with id, event_name, property."""

    key: str
    name: str
    event_name: str
    property: str = "units"
    id: str | None = None  # None until found or created

    def toml(self) -> str:
        key = self.key if re.fullmatch(r"[A-Za-z0-9_-]+", self.key) else toml_str(self.key)
        return (
            f"[meters.{key}]\n"
            f"id = {toml_str(self.id or '<created on apply>')}\n"
            f"event_name = {toml_str(self.event_name)}\n"
            f"property = {toml_str(self.property)}\n"
        )


@dataclass
class WebhookPlan:
    url: str
    events: list[str]
    endpoint_id: str | None = None  # an existing endpoint with this URL
    changes: dict[str, Any] = field(default_factory=dict)  # its update, when it needs one
    secret: str | None = None  # Polar's answer: shown once when created, or on request


@dataclass
class SetupRequest:
    rules: RulesFile | None = None
    meter_name: str = "API calls"
    event_name: str = "api_usage"
    property: str = "units"
    webhook_url: str | None = None
    write_rules: Path | None = None


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    meters: list[MeterSpec] = field(default_factory=list)
    meters_to_create: list[MeterSpec] = field(default_factory=list)
    webhook: WebhookPlan | None = None
    products: list[Product] = field(default_factory=list)  # for the starter rules file
    rules_file: Path | None = None  # to write
    scopes_missing: list[str] = field(default_factory=list)

    def add(self, area: Area, action: Action, detail: str) -> None:
        self.steps.append(Step(area, action, detail))

    @property
    def problems(self) -> list[Step]:
        return [s for s in self.steps if s.action == "problem"]

    @property
    def nothing_to_do(self) -> bool:
        return not any(s.action in CHANGES for s in self.steps)
