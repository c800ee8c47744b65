"""Polar's prerequisites for the service, checked and made in one idempotent pass
(`polar-credits setup`): the access token and its scopes, the Sum meter(s), products that
would wipe negative-event credits, the webhook endpoint, and a starter rules file.

Planning only reads; applying makes exactly the changes the plan lists, so a second run
plans nothing. What setup finds wrong but does not own (a meter with another filter, a missing
scope) is reported, never changed: a problem stops the run before any change.

One module per job: plan.py (the request, the plan and its steps), polar_calls.py (one call
to Polar, every page of a list), token_scopes.py (the scopes, probed), planning.py (meters,
products, webhook endpoint, rules file: reads only), applying.py (the plan's changes),
starter_rules.py and toml_text.py (the starter rules file). Callers import from here.
"""

from polar_credits.polar_setup.applying import SetupError, apply_plan
from polar_credits.polar_setup.plan import (
    CHANGES,
    Action,
    Area,
    MeterSpec,
    Plan,
    SetupRequest,
    Step,
    WebhookPlan,
)
from polar_credits.polar_setup.planning import (
    API_VERSION,
    ORDER_EVENTS,
    SUBSCRIPTION_EVENTS,
    aggregation_matches,
    filter_matches,
    make_plan,
    wanted_events,
    webhook_url_problem,
)
from polar_credits.polar_setup.polar_calls import TokenRefused
from polar_credits.polar_setup.starter_rules import starter_rules
from polar_credits.polar_setup.token_scopes import SERVICE_SCOPES, SETUP_SCOPES, UNPROBED_SCOPES

__all__ = [
    "API_VERSION",
    "CHANGES",
    "ORDER_EVENTS",
    "SERVICE_SCOPES",
    "SETUP_SCOPES",
    "SUBSCRIPTION_EVENTS",
    "UNPROBED_SCOPES",
    "Action",
    "Area",
    "MeterSpec",
    "Plan",
    "SetupError",
    "SetupRequest",
    "Step",
    "TokenRefused",
    "WebhookPlan",
    "aggregation_matches",
    "apply_plan",
    "filter_matches",
    "make_plan",
    "starter_rules",
    "wanted_events",
    "webhook_url_problem",
]
