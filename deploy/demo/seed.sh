#!/bin/sh
# Loads the demo's plans, subscriptions and opening balances into Redis with the credit-gate CLI.
# It reads CREDIT_GATE_REDIS_URL (docker-compose.yml sets it) and is safe to run again:
#   - `plans apply` rewrites the same plans;
#   - `import` keeps an existing subscription's start and period (so the allowance already used stays
#     used), and grants each opening balance once, under the idempotency key of accounts.csv's `key`
#     column, however often it runs.
# The accounts are the Kong consumers' usernames: kong.yml names the account by `consumer_username`.
set -eu
demo=$(dirname "$0")
credit-gate plans apply "$demo/plans.yaml"
credit-gate import "$demo/accounts.csv"
credit-gate accounts
