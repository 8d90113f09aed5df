"""The bridge runs on contributors' PCs with only `requests` installed: it must never pull in
Django or the cluster's apps, not even indirectly."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import bridge
from bridge.tests.processes import bridge_env

BRIDGE_DIR = Path(bridge.__file__).parent
FORBIDDEN = ["django", "rest_framework", "accounts", "servers", "generations", "koboldcluster"]
# requests and what requests itself needs; everything else must come from the standard library.
ALLOWED = {"bridge", "requests", "urllib3", "certifi", "idna", "charset_normalizer", "chardet"}


def bridge_modules() -> list[str]:
    """Every module of the package and of its test doubles (they run as processes too), but not
    the test files, which may use pytest and the project's fixtures."""
    names = [
        info.name
        for info in pkgutil.walk_packages([str(BRIDGE_DIR)], prefix="bridge.")
        if not info.name.rsplit(".", 1)[-1].startswith(("test_", "conftest"))
    ]
    assert {"bridge.__main__", "bridge.worker", "bridge.tests.kai_double"} <= set(names)
    return names


def test_bridge_imports_nothing_from_django_or_the_cluster():
    code = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {bridge_modules()!r}:
            importlib.import_module(name)
        loaded = sorted(name for name in {FORBIDDEN!r} if name in sys.modules)
        assert not loaded, f"bridge imported {{loaded}}"
        outside = {{name.split(".")[0] for name in sys.modules}} - set(sys.stdlib_module_names)
        # Runtime modules of compiled wheels (charset_normalizer ships Cython code) don't count.
        outside -= {{"__main__", "_distutils_hack", *{ALLOWED!r}}}
        outside = sorted(name for name in outside if "cython" not in name)
        assert not outside, f"bridge needs more than requests: {{outside}}"
        """
    )
    env = bridge_env()
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=BRIDGE_DIR.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_requirements_are_just_requests():
    lines = (BRIDGE_DIR / "requirements.txt").read_text().splitlines()
    requirements = [line for line in lines if line.strip() and not line.startswith("#")]
    assert requirements == ["requests==2.34.2"]
