"""Rule keys across rules files: what the registry run (workflows/rules_registry.py) holds, and
the worker's start-up check that refuses a file dropping a key which has granted while another
rule takes over its products (a renamed rule without `key` would grant those orders again).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from polar_credits.identity import registry_workflow_id

if TYPE_CHECKING:
    from temporalio.client import Client

    from polar_credits.rules import Rule, RulesFile

# The registry mirrors what it holds into this memo field: the worker reads it at start-up,
# before any worker polls (a query would wait for one).
REGISTRY_MEMO = "accepted_rule_keys"
# The registry keeps the versions of the last files it accepted, not all of them.
VERSIONS_KEPT = 50

RuleKind = Literal["order", "cadence"]


@dataclass
class RegisteredKey:
    """A rule key some accepted rules file had, with what that rule granted for."""

    kind: RuleKind
    products: list[str] | None  # None: every product
    rule_id: str  # the id it had in the latest file that had it
    first_version: str = ""
    last_version: str = ""


@dataclass
class AcceptedRules:
    """One rules file the worker started with: its version and its rules' keys."""

    version: str
    keys: dict[str, RegisteredKey]


@dataclass
class RegistryState:
    """Every key any accepted file ever had; the registry's input after continue-as-new."""

    keys: dict[str, RegisteredKey] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)  # oldest first, the last VERSIONS_KEPT
    history_limit: int | None = None  # tests set it low to see continue-as-new happen

    def accept(self, accepted: AcceptedRules) -> None:
        for key, seen in accepted.keys.items():
            known = self.keys.get(key)
            first = known.first_version if known else accepted.version
            self.keys[key] = RegisteredKey(
                kind=seen.kind,
                products=seen.products,
                rule_id=seen.rule_id,
                first_version=first,
                last_version=accepted.version,
            )
        if accepted.version not in self.versions:
            self.versions = (self.versions + [accepted.version])[-VERSIONS_KEPT:]

    def memo(self) -> dict[str, Any]:
        return {"keys": {key: asdict(entry) for key, entry in self.keys.items()}}

    @classmethod
    def from_memo(cls, memo: dict[str, Any] | None) -> RegistryState:
        keys = (memo or {}).get("keys") or {}
        return cls(keys={key: RegisteredKey(**entry) for key, entry in keys.items()})


@dataclass
class Takeover:
    """A key the new file drops whose products a rule of the new file grants for."""

    key: str
    registered: RegisteredKey
    rule_id: str  # the rule of the new file that takes over
    rule_key: str
    products: list[str] | None  # the products they share (None: every product)


class DroppedRuleKeys(Exception):
    """The rules file drops a key that has granted while another rule takes its products."""


def kind_of(rule: Rule) -> RuleKind:
    return "cadence" if rule.every is not None else "order"


def accepted_rules(rules: RulesFile) -> AcceptedRules:
    return AcceptedRules(
        version=rules.version,
        keys={
            rule.stable_key: RegisteredKey(
                kind=kind_of(rule),
                products=list(rule.products) if rule.products is not None else None,
                rule_id=rule.id,
            )
            for rule in rules.rules
        },
    )


def takeovers(registry: RegistryState, rules: RulesFile) -> list[Takeover]:
    """Keys the registry knows that `rules` drops, each with a rule of `rules` of the same
    kind (order or cadence) whose products overlap. Whether the key granted is asked apart."""
    present = {rule.stable_key for rule in rules.rules}
    found = []
    for key, registered in sorted(registry.keys.items()):
        if key in present:
            continue
        for rule in rules.rules:
            if kind_of(rule) != registered.kind:
                continue
            shared = _overlap(registered.products, rule.products)
            if shared is None or shared:
                found.append(Takeover(key, registered, rule.id, rule.stable_key, shared))
                break
    return found


def _overlap(old: list[str] | None, new: list[str] | None) -> list[str] | None:
    """The products both grant for: None means every product (both name no products)."""
    if old is None and new is None:
        return None
    if old is None:
        return list(new or [])
    if new is None:
        return list(old)
    return [product for product in old if product in new]


def granted_query(key: str, registered: RegisteredKey, task_queue: str) -> str:
    """A visibility query counting this deployment's runs that granted under `key`. Order
    runs carry the keys of the rules that granted (`CreditRuleKeys`); allowance runs carry
    their product and the units they granted."""
    scope = f"TaskQueue = {_quoted(task_queue)}"
    if registered.kind == "order":
        return f"{scope} AND CreditRuleKeys = {_quoted(key)}"
    query = f"{scope} AND WorkflowType = 'SubscriptionAllowanceWorkflow' AND CreditUnits > 0"
    if registered.products is not None:
        products = ", ".join(_quoted(p) for p in registered.products)
        query += f" AND PolarProductId IN ({products})"
    return query


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def refusal(takeover: Takeover, runs: int) -> str:
    products = "every product" if takeover.products is None else ", ".join(takeover.products)
    return (
        f"the rules file drops rule key {takeover.key!r} (rule {takeover.registered.rule_id!r} "
        f"in rules version {takeover.registered.last_version or 'unknown'}), which has granted "
        f"({runs} run(s)), while rule {takeover.rule_id!r} (key {takeover.rule_key!r}) now "
        f"grants for the same products ({products}): orders and periods already credited "
        f"under {takeover.key!r} would be credited again. If the rule was renamed, keep its "
        f'key: add key = "{takeover.key}" to rule {takeover.rule_id!r}. If granting again '
        "is intended, start the worker with CREDITS_ALLOW_DROPPED_RULE_KEYS=true "
        "(polar-credits worker --allow-dropped-keys)."
    )


async def read_registry(client: Client, task_queue: str) -> RegistryState:
    """What the registry had processed, from its memo (no worker needed); empty before the
    first rules file was accepted."""
    from temporalio.service import RPCError, RPCStatusCode

    handle = client.get_workflow_handle(registry_workflow_id(task_queue))
    try:
        described = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return RegistryState()
        raise
    return RegistryState.from_memo(await described.memo_value(REGISTRY_MEMO, None))


async def check_rule_keys(
    client: Client, task_queue: str, rules: RulesFile, *, allow_dropped: bool
) -> list[str]:
    """Raises DroppedRuleKeys when the file drops a key that has granted while another rule
    takes over its products. With `allow_dropped`, returns the same findings as warnings."""
    problems = []
    for takeover in takeovers(await read_registry(client, task_queue), rules):
        query = granted_query(takeover.key, takeover.registered, task_queue)
        counted = await client.count_workflows(query)
        if counted.count > 0:
            problems.append(refusal(takeover, counted.count))
    if problems and not allow_dropped:
        raise DroppedRuleKeys("\n".join(problems))
    return problems
