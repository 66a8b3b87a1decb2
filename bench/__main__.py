"""``python -m bench``: see ``bench/README.md`` and ``python -m bench --help``."""

from bench.cli import main

if __name__ == "__main__":
    main()
