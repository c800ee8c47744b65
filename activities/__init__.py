"""Temporal activities: every side effect of the service (rules evaluation, Polar API calls)."""
