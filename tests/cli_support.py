"""Running the ``credit-gate`` CLI in tests: in-process through click's runner, or as the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from creditgate.cli import cli
from creditgate.core.config import RedisSettings

# The console script pip installed next to this Python.
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("credit-gate"))


def redis_url(settings: RedisSettings) -> str:
    return f"redis://{settings.host}:{settings.port}/{settings.database}"


class Cli:
    """``credit-gate`` pointed at one Redis; ``run`` returns click's Result (stdout and stderr apart)."""

    def __init__(self, settings: RedisSettings) -> None:
        self.env = {"CREDIT_GATE_REDIS_URL": redis_url(settings), "COLUMNS": "160"}

    def run(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), env=self.env, input=input, catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def script(
        self, *args: str, timeout: float = 30, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The installed console script in a subprocess: real exit codes, real stderr."""
        return subprocess.run(
            [CONSOLE_SCRIPT, *args],
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


PLANS_YAML = """\
plans:
  - name: free
    title: Free
    period: month
    allowance: 100
    prepaid: false
  - name: pro
    title: Pro
    period: month
    allowance: 1000
    prepaid: true
"""
