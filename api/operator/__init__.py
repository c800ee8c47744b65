"""The operator API: beside the webhook in the same app, one router per area, all behind
`OPERATOR` (a named bearer token, api/operator/auth.py); routes that change something also
need a write token (`WriterDep`). Off while no token is set."""
