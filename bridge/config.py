"""The bridge's settings: command-line flags win over environment variables, which win over the
config file (TOML), which wins over the defaults.

Every public option is declared once in `OPTIONS` (`bridge/options.py`); the argument parser,
the environment lookup, the config file keys and the validation messages are all derived from
that table, so the three ways of setting an option cannot drift apart.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from argparse import SUPPRESS
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.options import (
    BY_ALIAS,
    BY_KEY,
    DEFAULT_CONFIG_FILE,
    ENV_PREFIX,
    OPTIONS,
    TUNING,
    Config,
    ConfigError,
    Invalid,
    seconds,
    switch,
)

# The values bridgeData.template.toml ships with. Left unedited, they would join the cluster
# under a name and an account that other contributors' unedited copies share.
PLACEHOLDERS = {
    "name": "my-kobold-server",
    "username": "my-username",
    "password": "change-me",
    "apikey": "your-22-character-key",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would print the usage and exit 2; one line in the same style as every
        # other configuration mistake is easier to read.
        raise ConfigError(f"{message} (see python -m bridge --help)")


def build_parser() -> argparse.ArgumentParser:
    """The command line. Defaults are suppressed so that only flags actually given show up and
    can take precedence over the environment and the file."""
    parser = _Parser(
        prog="python -m bridge",
        description="Serve the KoboldAI Cluster's text-generation jobs with your local LLM server.",
        epilog=(
            "Every option can also be set with an environment variable (BRIDGE_ plus the "
            "option in capitals, e.g. BRIDGE_BACKEND_URL) or in the config file with its "
            'snake_case name (e.g. backend_url = "http://127.0.0.1:5001"). Flags win over the '
            "environment, which wins over the file. Start from bridge/bridgeData.template.toml."
        ),
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML config file (default: {DEFAULT_CONFIG_FILE} in the current directory, "
        "if it exists)",
    )
    quiet_or_verbose = parser.add_mutually_exclusive_group()
    for option in OPTIONS:
        names = [option.short, option.flag] if option.short else [option.flag]
        target = quiet_or_verbose if option.key in ("verbose", "quiet") else parser
        if option.metavar is None:
            target.add_argument(*names, dest=option.key, action="store_true", help=option.help)
        else:
            target.add_argument(*names, dest=option.key, metavar=option.metavar, help=option.help)
        if option.alias:
            old = "--" + option.alias.replace("_", "-")
            target.add_argument(old, dest=option.alias, metavar=option.metavar, help=SUPPRESS)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _read_file(path: Path, shown: str, explicit: bool) -> dict[str, Any]:
    """The file's settings; `shown` is the file as the contributor named it, for messages."""
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file not found: {path}")
        return {}
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{shown} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    for key in data:
        if key not in BY_KEY and key not in BY_ALIAS:
            close = difflib.get_close_matches(key, list(BY_KEY), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown setting {key!r} in {shown}{hint}")
    return data


def load_config(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Build the Config from flags, environment and file; raise ConfigError on any mistake."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    flags = vars(build_parser().parse_args(argv))

    explicit_file = "config" in flags
    shown = flags.pop("config") if explicit_file else DEFAULT_CONFIG_FILE
    path = Path(shown) if Path(shown).is_absolute() else cwd / shown
    from_file = _read_file(path, shown, explicit_file)

    # Each source maps key -> (raw value, how the contributor wrote it, for messages).
    # An empty environment variable counts as unset, as docker-compose and .env files produce them.
    sources: list[dict[str, tuple[Any, str]]] = [
        _under_current_names(
            {key: (value, "--" + key.replace("_", "-")) for key, value in flags.items()}
        ),
        _from_environment(environ),
        _under_current_names(
            {key: (value, f"{key} in {shown}") for key, value in from_file.items()}
        ),
    ]

    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.key in ("verbose", "quiet"):
            continue
        for source in sources:
            if option.key in source:
                raw, label = source[option.key]
                values[option.key] = _parse(option.parse, raw, label, option.secret)
                if values[option.key] == PLACEHOLDERS.get(option.key):
                    raise ConfigError(
                        f"{label} is still the template's placeholder "
                        f"{PLACEHOLDERS[option.key]!r}: replace it with your own"
                    )
                break
    values["verbosity"] = _verbosity(sources)
    for key in TUNING:
        env = ENV_PREFIX + key.upper()
        if environ.get(env, "").strip():
            values[key] = _parse(seconds, environ[env], env)

    _check_identity(values, shown)
    return Config(**values, config_file=str(path) if path.exists() else None)


def _under_current_names(found: dict[str, tuple[Any, str]]) -> dict[str, tuple[Any, str]]:
    """Settings given under an option's old name count under its new one, unless the new
    one is given too; the label keeps the name the contributor wrote, for messages."""
    current = {key: value for key, value in found.items() if key not in BY_ALIAS}
    for alias, option in BY_ALIAS.items():
        if alias in found and option.key not in current:
            current[option.key] = found[alias]
    return current


def _from_environment(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    found = {}
    for option in OPTIONS:
        names = [option.env] + ([ENV_PREFIX + option.alias.upper()] if option.alias else [])
        for name in names:
            if environ.get(name, "").strip():
                found[option.key] = (environ[name], name)
                break
    return found


def _parse(parse: Callable[[Any], Any], raw: Any, label: str, secret: bool = False) -> Any:
    try:
        return parse(raw)
    except Invalid as invalid:
        # A password or key is described, never shown: error lines end up in screenshots.
        shown = _describe(raw) if secret else repr(raw) if isinstance(raw, str) else raw
        raise ConfigError(f"{label} must be {invalid.wanted}, got {shown}{invalid.hint}") from None


def _describe(value: Any) -> str:
    """What kind of value this is, for messages that must not show a secret."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty text" if not value.strip() else "a text"
    return "a list" if isinstance(value, list) else "a table"


def _verbosity(sources: list[dict[str, tuple[Any, str]]]) -> str:
    # -v and -q are one setting written two ways: the first source that mentions either decides.
    for source in sources:
        verbose = _parse(switch, *source["verbose"]) if "verbose" in source else False
        quiet = _parse(switch, *source["quiet"]) if "quiet" in source else False
        if verbose and quiet:
            raise ConfigError(
                f"{source['verbose'][1]} and {source['quiet'][1]} are both set; choose one"
            )
        if "verbose" in source or "quiet" in source:
            return "verbose" if verbose else "quiet" if quiet else "normal"
    return "normal"


def _check_identity(values: dict[str, Any], file_name: str) -> None:
    def where(key: str) -> str:
        option = BY_KEY[key]
        return f"{option.flag}, {option.env} or {key} in {file_name}"

    if "name" not in values:
        # No hostname default: a hostname often carries its owner's real name, and the server
        # name is public in the cluster's server list.
        raise ConfigError(f"no server name: set {where('name')}")
    if "apikey" in values:
        return
    if values.get("protocol") == "horde":
        # The v2 API knows only API keys; a username and password there would be ignored.
        raise ConfigError(
            f"--protocol horde needs an API key of your account: set {where('apikey')} "
            "(a username and password are not used by the horde protocol)"
        )
    if "username" not in values and "password" not in values:
        raise ConfigError(
            f"no credentials: set --username and --password (or --apikey), "
            f"as flags, BRIDGE_ variables or in {file_name}"
        )
    if "password" not in values:
        raise ConfigError(f"a username is set but no password: set {where('password')}")
    if "username" not in values:
        raise ConfigError(f"a password is set but no username: set {where('username')}")
