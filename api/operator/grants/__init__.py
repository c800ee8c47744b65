"""The operator's grants, split by job as Polar's server splits a domain: `routes` (thin
endpoints), `service` (the actions: grant, revoke planning, rerun, and the one place each
workflow is started from here), `reads` (listing and showing runs, read from Temporal),
`states` (the runs' `state` answers, typed), `schemas` (request and response models) and
`query` (the visibility query of `GET /grants`)."""
