# Kong (open-source, DB-less ready) with credit-gate's plugin server and the `credit-gate` CLI.
#
#   docker build -t credit-gate-kong .
#
# Kong starts the plugin server itself, from its worker 0, with the KONG_PLUGINSERVER_* settings below,
# and respawns it about a second after it dies. Those settings are what `credit-gate kong-conf --env`
# prints (kong_plugins/creditgate/ops/kong_conf.py); tests/deploy/test_image.py fails when the two disagree.
#
# hadolint (tests/deploy/test_image.py runs it) reports nothing but the two rules ignored below, each
# with its reason.
FROM kong:3.9.1

# The official image runs as `kong`; installing needs root for a moment.
USER 0

# Ubuntu's Python, in a virtual environment of its own so that nothing touches the system's packages.
# DL3008 (pin apt versions): not pinned on purpose. The base image is pinned (kong:3.9.1), and Ubuntu's
# archive keeps only the current version of a package, so a pinned version breaks the build at the
# next security update instead of making it reproducible. The Python packages are pinned (below).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Only what the package needs to build (.dockerignore keeps the rest of the checkout out of the image).
# schemas/ too: the package's creditgate/schemas is a link to it, and COPY keeps links as links.
COPY pyproject.toml README.md constraints.txt /opt/credit-gate/src/
COPY schemas /opt/credit-gate/src/schemas
COPY kong_plugins /opt/credit-gate/src/kong_plugins

# Every package at the version constraints.txt pins, the versions the test suite runs with.
# Owned by root and read-only for `kong`: the server cannot rewrite its own code.
# The links put both commands on the default PATH of a shell that has no PATH at all, which is what
# Kong's `exec <start_cmd>` gets from an nginx worker (nginx clears the environment of its workers).
RUN python3 -m venv /opt/credit-gate/venv \
    && /opt/credit-gate/venv/bin/pip install --no-cache-dir \
        -c /opt/credit-gate/src/constraints.txt /opt/credit-gate/src \
    && rm -rf /opt/credit-gate/src \
    && ln -s /opt/credit-gate/venv/bin/credit-gate-pluginserver /usr/local/bin/credit-gate-pluginserver \
    && ln -s /opt/credit-gate/venv/bin/credit-gate /usr/local/bin/credit-gate \
    && credit-gate-pluginserver --dump > /dev/null

# Back to the user Kong runs as. Kong's prefix (/usr/local/kong) belongs to it in the official image,
# so the plugin server, started by a Kong worker as `kong`, can create its socket there.
# DL3066 (numeric user id): `kong` is the user the official image creates and documents; its number
# is that image's choice, not this file's.
# hadolint ignore=DL3066
USER kong

# The plugin server, as Kong runs it. The socket path is set on both sides: Kong's default socket name
# and kong-pdk's differ. `bundled,credit-gate` keeps Kong's own plugins (key-auth, rate-limiting,
# request-termination...) enabled next to this one.
ENV KONG_PLUGINS=bundled,credit-gate \
    KONG_PLUGINSERVER_NAMES=credit-gate \
    KONG_PLUGINSERVER_CREDIT_GATE_SOCKET=/usr/local/kong/credit-gate.sock \
    KONG_PLUGINSERVER_CREDIT_GATE_START_CMD="credit-gate-pluginserver -g --kong-prefix /usr/local/kong --socket-name credit-gate.sock" \
    KONG_PLUGINSERVER_CREDIT_GATE_QUERY_CMD="credit-gate-pluginserver --dump"

# Healthy means Kong answers AND the plugin server accepts connections on its socket: until then
# requests would run without the gate (see docs/fail-closed.md for what stops them reaching the API).
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=12 \
    CMD ["/bin/sh", "-c", "kong health > /dev/null && python3 -c \"import socket; socket.socket(socket.AF_UNIX).connect('/usr/local/kong/credit-gate.sock')\""]
