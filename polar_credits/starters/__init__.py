"""One starter per workflow kind: each owns how its runs are started or reached (workflow id,
id-reuse and conflict policy, task queue, search attributes, memo, UI text).

Callers (the webhook, the operator API, activities, the CLI, the worker) pass the Temporal client
and the business input, and keep their own error handling. Import the submodule you need:
  orders      OrderCreditsWorkflow (webhook, reconciliation, an operator's rerun)
  allowances  SubscriptionAllowanceWorkflow (subscription webhooks, recovery, reconciliation)
  operator    ManualGrantWorkflow, RevokeGrantWorkflow, BackfillWorkflow (operator API)
  runs        RulesPreviewWorkflow, ReconcileWorkflow (now and scheduled), RecoverWorkflow
  ledger      CustomerLedgerWorkflow (update-with-start from the order run's activity)
  budget      PolarBudgetWorkflow (update-with-start from every Polar call's permit)
  registry    RulesRegistryWorkflow (signal-with-start at worker start-up)
Nothing is re-exported here: activities import one submodule without importing every workflow.
"""
