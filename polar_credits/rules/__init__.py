"""The crediting rules: which orders grant how many units of which meter, and which cadence
rules grant to a subscription on their own timer.

One module per job: schema.py (the TOML file's models and validators), loading.py (reading
and validating the file), matching.py (does a rule apply), amounts.py (how many units),
engine.py (the decision: where an order's credits are decided). The keys Polar dedupes grants
by are built with every other id in polar_credits/identity.py. Callers import from here.
"""

from polar_credits.rules.amounts import (
    ZERO_DECIMAL_CURRENCIES,
    cap_outcome,
    capped_units,
    currency_units,
    period_units,
    reads_balance,
)
from polar_credits.rules.engine import (
    FIRST_ORDER,
    GRANTING_STATUSES,
    apply_caps,
    cap_reason,
    cap_reservations,
    decide_allowance_rules,
    decide_grants,
    describe,
    explain_order,
    grant_key_of,
    grant_refusal,
    granted_rule_keys,
    needs_first_order,
)
from polar_credits.rules.loading import load_rules, parse_rules, rules_version
from polar_credits.rules.schema import (
    BillingReason,
    MetadataKeys,
    MetadataTest,
    Meter,
    Rule,
    RulesError,
    RulesFile,
)

__all__ = [
    "FIRST_ORDER",
    "GRANTING_STATUSES",
    "ZERO_DECIMAL_CURRENCIES",
    "BillingReason",
    "MetadataKeys",
    "MetadataTest",
    "Meter",
    "Rule",
    "RulesError",
    "RulesFile",
    "apply_caps",
    "cap_outcome",
    "cap_reason",
    "cap_reservations",
    "capped_units",
    "currency_units",
    "decide_allowance_rules",
    "decide_grants",
    "describe",
    "explain_order",
    "grant_key_of",
    "grant_refusal",
    "granted_rule_keys",
    "load_rules",
    "needs_first_order",
    "parse_rules",
    "period_units",
    "reads_balance",
    "rules_version",
]
