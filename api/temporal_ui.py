"""Links into Temporal's web UI: the `ui_url` the webhook and the operator API answer with."""

from __future__ import annotations

from urllib.parse import quote

from polar_credits.settings import Settings


def workflow_ui_url(settings: Settings, workflow_id: str) -> str:
    """Ids are percent-encoded: whatever an order id holds, the link opens that run."""
    base = settings.temporal_ui_url.rstrip("/")
    namespace = quote(settings.temporal_namespace, safe="")
    return f"{base}/namespaces/{namespace}/workflows/{quote(workflow_id, safe='')}"
