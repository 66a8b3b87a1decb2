"""``credit-gate serve``: the operators' HTTP API, payments in from billing systems, and metrics.

The service is a thin HTTP layer over ``creditgate.ops.admin.Admin`` (the same validation and the same
errors as the CLI), built on FastAPI (which writes the OpenAPI document) and served by uvicorn.

    app.py       the application: problem bodies, limits, the routes put together
    auth.py      bearer tokens, read-only and read-write, compared in constant time
    body.py      request bodies: size limit, content type, JSON, the shared JSON Schemas
    problems.py  RFC 9457 problem bodies with stable codes
    routes.py    accounts, plans, subscriptions, credits, the ledger, usage and export
    webhooks.py  Stripe's signed webhooks and a generic signed webhook, each event applied once
    metrics.py   /metrics for Prometheus, from the counters the charge script keeps
"""
