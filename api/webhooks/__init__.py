"""Polar's webhook endpoint, split by job: `route` (`POST /webhooks/polar`, and why each
answer is what it is), `intake` (body, signature, payload), `orders` (`order.paid` starts the
order's run), `subscriptions` (steering the allowance runs), `answers` (answering, counted)
and `schemas` (the envelopes read, the answer given, the OpenAPI request schema)."""

from polar_credits.api.webhooks.intake import polar_verifier
from polar_credits.api.webhooks.route import router

__all__ = ["polar_verifier", "router"]
