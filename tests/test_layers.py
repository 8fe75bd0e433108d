"""The package's layers: the import contract holds (TYPE_CHECKING imports count), and the lower layers load
none of the upper ones' dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("yaml", "mitmproxy.flowfilter", "httpx", "litellm", "pydantic")


def test_the_layer_contract_is_kept():
    done = subprocess.run([Path(sys.executable).parent / "lint-imports", "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "0 broken" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("module", ["memproxy.memory.local", "memproxy.recall", "memproxy.capture", "memproxy.outbox",
                                    "memproxy.config"])
def test_a_low_layer_loads_no_heavy_dependency(module):
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == [], f"importing {module} loaded {done.stdout.strip()}"
