"""Reading the environment into settings: typed values with clear errors, and where the
cluster keeps its files. Used by `koboldcluster/settings.py` and `koboldcluster/rules.py`."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: expected true or false")


def env_int(name: str, default: int, minimum: int | None = 0) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: expected a whole number") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={value!r}: must be at least {minimum}")
    return number


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: expected a number") from None


_PERIODS = {
    1: ("s", "sec", "second"),
    60: ("m", "min", "minute"),
    3600: ("h", "hour"),
    86400: ("d", "day"),
}


def parse_rate(value: str, name: str = "rate") -> tuple[int, int] | None:
    """A rate like `90/min`, `2/s`, `10/hour`, `1000/day` as (requests, seconds); `off`: None."""
    value = value.strip().lower()
    if value in ("off", "none"):
        return None
    count, _, period = value.partition("/")
    seconds = next((s for s, words in _PERIODS.items() if period in words), None)
    if not count.isdigit() or int(count) < 1 or seconds is None:
        raise ImproperlyConfigured(f"{name}={value!r}: expected e.g. 90/min, 2/s, 10/hour or off")
    return int(count), seconds


def env_rate(name: str, default: str) -> tuple[int, int] | None:
    return parse_rate(os.environ.get(name) or default, name)


def parse_networks(value: str, name: str = "KOBOLDCLUSTER_TRUSTED_PROXIES") -> list:
    """`10.0.0.1, 172.16.0.0/12, ::1` as networks; empty means no proxy is trusted."""
    networks = []
    for item in value.replace(" ", ",").split(","):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {item!r} is not an address or network") from None
    return networks


VAR_DIR = Path(os.environ.get("KOBOLDCLUSTER_VAR_DIR") or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)
