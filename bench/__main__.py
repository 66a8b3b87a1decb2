"""``python -m bench``: see ``bench/README.md`` and ``python -m bench --help``."""

import sys

from bench.cli import main

if __name__ == "__main__":
    if sys.argv[1:2] == ["money-model"]:
        from bench.money_model import main as money_model

        money_model(sys.argv[2:])
    elif sys.argv[1:2] == ["ledger-verify"]:
        from bench.ledger_verify import main as ledger_verify

        ledger_verify(sys.argv[2:])
    elif sys.argv[1:2] == ["usage-totals"]:
        from bench.usage_totals import main as usage_totals

        usage_totals(sys.argv[2:])
    elif sys.argv[1:2] == ["startup"]:
        from bench.startup import main as startup

        startup(sys.argv[2:])
    else:
        main()
