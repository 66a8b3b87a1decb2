"""The credit-gate benchmark: what the gate costs a plugin server, measured against a baseline plugin.

``python -m bench`` (``make bench``) starts its own redis-server on a free loopback port, the real
``credit-gate-pluginserver`` and a baseline plugin server that makes the same PDK calls as the gate's
allowed path and nothing else, each on credit-gate's runtime and on kong-pdk's, drives them through
Kong's plugin-server protocol at several concurrencies, and prints markdown tables. Modules:

- :mod:`bench.driver`: the Kong side, a lean MessagePack-RPC load driver in worker processes;
- :mod:`bench.procs`: redis-server and plugin server processes, the runtimes they run on, and what
  ``/proc`` says about them;
- :mod:`bench.lineup`: the settings, and the servers of a row set (each runtime's, the reference, the peer);
- :mod:`bench.runner`: seeding, the measured windows, the ``--long`` and ``--overspend`` scenarios;
- :mod:`bench.compare`: the runtimes side by side, against the reference, and issue 25's targets;
- :mod:`bench.report`: the tables, the target checks and the JSON;
- :mod:`bench.baseline_plugin`: the baseline plugin server, on either Python runtime;
- :mod:`bench.js_peer`: Kong's JavaScript plugin server running the baseline (``bench/js/``).
"""
