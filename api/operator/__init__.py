"""The operator API: beside the webhook in the same app, one router per area, all behind
`OperatorDep` (a bearer token, CREDITS_OPERATOR_TOKEN). Off when the token is unset."""
