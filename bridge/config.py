"""The bridge's settings: command-line flags win over environment variables, which win over the
config file (TOML), which wins over the defaults.

Every public option is declared once in `OPTIONS`; the argument parser, the environment lookup,
the config file keys and the validation messages are all derived from that table, so the three
ways of setting an option cannot drift apart.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from argparse import SUPPRESS
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge import __version__

DEFAULT_CONFIG_FILE = "bridgeData.toml"
ENV_PREFIX = "BRIDGE_"
MAX_THREADS = 50  # the cluster (like the AI Horde) refuses more threads per server
# The --protocol values, as registered in bridge.cluster.PROTOCOLS (a test keeps them equal;
# listed here so that reading the settings does not need the HTTP code).
PROTOCOL_NAMES = ("original", "horde")
# The --backend values: which API family to use; unset, the bridge detects it.
BACKEND_PROTOCOLS = ("kobold", "openai")


# The values bridgeData.template.toml ships with. Left unedited, they would join the cluster
# under a name and an account that other contributors' unedited copies share.
PLACEHOLDERS = {
    "name": "my-kobold-server",
    "username": "my-username",
    "password": "change-me",
    "apikey": "your-22-character-key",
}


class ConfigError(Exception):
    """A missing or bad setting. The message is one line, written for the contributor."""


@dataclass(frozen=True)
class Config:
    """Validated settings; built by `load_config`."""

    cluster_url: str = "http://127.0.0.1:5001"
    protocol: str = "original"
    backend_url: str = "http://127.0.0.1:5000"
    backend: str | None = None  # "kobold" or "openai"; None: detect
    backend_apikey: str | None = None
    model_name: str | None = None
    pause_when_busy: float = 0.0
    name: str = ""
    username: str | None = None
    password: str | None = None
    apikey: str | None = None
    interval: float = 1.0
    pop_wait: float = 20.0
    threads: int = 1
    max_length: int | None = None
    max_context_length: int | None = None
    verbosity: str = "normal"  # "quiet", "normal" or "verbose"
    log_prompts: bool = False
    config_file: str | None = None  # the file that was read, if any, for the start-up log
    # Tuning knobs, read only from the environment (BRIDGE_BACKOFF_BASE, ...) and deliberately
    # left out of --help and the README: the defaults suit every contributor, but the test
    # suites need retries and refreshes measured in tenths of a second to stay fast.
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    refresh_interval: float = 30.0
    summary_interval: float = 300.0
    kai_timeout: float = 300.0


@dataclass(frozen=True)
class Option:
    """One public setting and the three names it goes by."""

    key: str  # config file key and Config field
    flag: str
    help: str
    parse: Callable[[Any], Any]
    metavar: str | None = None  # None: a switch that takes no value
    short: str | None = None
    secret: bool = False  # never echo the value in an error message
    alias: str | None = None  # an older key, still read as flag, variable and file key

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


class _Invalid(ValueError):
    """Raised by a parser with the phrase that completes "<setting> must be ...", and an
    optional hint shown after the offending value."""

    def __init__(self, wanted: str, hint: str = "") -> None:
        super().__init__(wanted)
        self.wanted = wanted
        self.hint = hint


def _url(value: Any) -> str:
    text = _text(value)
    if not text.startswith(("http://", "https://")):
        hint = f" (did you mean http://{text}?)" if "://" not in text else ""
        raise _Invalid("an http:// or https:// URL", hint)
    # The legacy bridge joined URLs with "+", so a trailing slash produced "//generate/pop".
    return text.rstrip("/")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        # TOML reads password = 1234 as a number: the fix is quotes.
        number = isinstance(value, int | float) and not isinstance(value, bool)
        raise _Invalid("a non-empty text", " (put it in quotes)" if number else "")
    return value.strip()


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise _Invalid("a number of seconds greater than 0")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise _Invalid("a number of seconds greater than 0") from None
    if not seconds > 0 or seconds == float("inf"):
        raise _Invalid("a number of seconds greater than 0")
    return seconds


def _seconds_or_zero(value: Any) -> float:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            if float(value) == 0:
                return 0.0
        except ValueError:
            pass
    try:
        return _seconds(value)
    except _Invalid:
        raise _Invalid("a number of seconds, 0 or more") from None


def _wait_seconds(value: Any) -> float:
    try:
        seconds = _seconds_or_zero(value)
    except _Invalid:
        seconds = -1.0
    if not 0 <= seconds <= 30:
        raise _Invalid("a number of seconds from 0 to 30")
    return seconds


def _whole(low: int, high: int | None) -> Callable[[Any], int]:
    wanted = f"a whole number from {low} to {high}" if high else f"a whole number of at least {low}"

    def parse(value: Any) -> int:
        if isinstance(value, bool | float):
            raise _Invalid(wanted)
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise _Invalid(wanted) from None
        if number < low or (high is not None and number > high):
            raise _Invalid(wanted)
        return number

    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    wanted = "one of " + ", ".join(choices)

    def parse(value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise _Invalid(wanted)
        return value.strip().lower()

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Invalid("true or false (1/0, yes/no, on/off)")


OPTIONS: tuple[Option, ...] = (
    Option(
        "cluster_url",
        "--cluster-url",
        f"address of the KoboldAI Cluster, or of any AI Horde-compatible cluster with "
        f"--protocol horde, e.g. https://aihorde.net (default: {Config.cluster_url})",
        _url,
        "URL",
    ),
    Option(
        "protocol",
        "--protocol",
        "how to talk to the cluster: original (the KoboldAI Cluster API; the default) or "
        "horde (the AI Horde v2 API of any AI Horde-compatible cluster; needs --apikey)",
        _choice(*PROTOCOL_NAMES),
        "{" + ",".join(PROTOCOL_NAMES) + "}",
    ),
    Option(
        "backend_url",
        "--backend-url",
        "address of your local LLM server: KoboldAI, KoboldCpp, llama.cpp server, Ollama, "
        f"vLLM, TabbyAPI or any OpenAI-compatible server (default: {Config.backend_url}; "
        "--kai-url is the old name)",
        _url,
        "URL",
        alias="kai_url",
    ),
    Option(
        "backend",
        "--backend",
        "the API to use with it: kobold (KoboldAI API) or openai (OpenAI-compatible); "
        "default: detected",
        _choice(*BACKEND_PROTOCOLS),
        "{" + ",".join(BACKEND_PROTOCOLS) + "}",
    ),
    Option(
        "backend_apikey",
        "--backend-apikey",
        "an API key your local server requires (sent as Authorization: Bearer), e.g. TabbyAPI's",
        _text,
        "KEY",
        secret=True,
    ),
    Option(
        "model_name",
        "--model-name",
        "advertise the model under this name instead of the one derived from your backend's",
        _text,
        "NAME",
    ),
    Option(
        "pause_when_busy",
        "--pause-when-busy",
        "after your backend was busy with your own use, wait this long before taking jobs "
        "again (default: 0)",
        _seconds_or_zero,
        "SECONDS",
    ),
    Option(
        "name",
        "--name",
        "this server's name in the cluster: unique, public, yours (required)",
        _text,
        "NAME",
    ),
    Option(
        "username",
        "--username",
        "your cluster account; the first pop with a new name creates it with --password",
        _text,
        "USER",
    ),
    Option(
        "password", "--password", "your cluster account's password", _text, "PASSWORD", secret=True
    ),
    Option(
        "apikey",
        "--apikey",
        "an API key of your cluster account, used instead of --username/--password "
        "(required with --protocol horde)",
        _text,
        "KEY",
        secret=True,
    ),
    Option(
        "interval",
        "--interval",
        "seconds to wait before asking again when there is no work (default: 1)",
        _seconds,
        "SECONDS",
    ),
    Option(
        "pop_wait",
        "--pop-wait",
        "seconds the cluster may hold a pop until a job arrives (long-poll; 0-30, default: "
        "20; 0 polls every --interval)",
        _wait_seconds,
        "SECONDS",
    ),
    Option(
        "threads",
        "--threads",
        f"jobs to run at once, for backends that serve parallel requests "
        f"(1-{MAX_THREADS}, default: 1)",
        _whole(1, MAX_THREADS),
        "N",
    ),
    Option(
        "max_length",
        "--max-length",
        "accept jobs asking for at most this many new tokens (default: what your backend "
        "reports, or 512; never above what it allows)",
        _whole(1, None),
        "TOKENS",
    ),
    Option(
        "max_context_length",
        "--max-context-length",
        "accept jobs with at most this much context (default and ceiling: what your backend "
        "reports; 2048 if it does not say)",
        _whole(1, None),
        "TOKENS",
    ),
    Option("verbose", "--verbose", "log more: every request and retry", _switch, short="-v"),
    Option(
        "quiet", "--quiet", "log only warnings, errors and the final summary", _switch, short="-q"
    ),
    Option(
        "log_prompts",
        "--log-prompts",
        "also log each job's prompt and generated text (off by default: they are private)",
        _switch,
    ),
)

_BY_KEY = {option.key: option for option in OPTIONS}
_BY_ALIAS = {option.alias: option for option in OPTIONS if option.alias}

# Hidden tuning settings (see Config): environment only, seconds.
_TUNING = ("backoff_base", "backoff_max", "refresh_interval", "summary_interval", "kai_timeout")


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
        if key not in _BY_KEY and key not in _BY_ALIAS:
            close = difflib.get_close_matches(key, list(_BY_KEY), n=1)
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
    for key in _TUNING:
        env = ENV_PREFIX + key.upper()
        if environ.get(env, "").strip():
            values[key] = _parse(_seconds, environ[env], env)

    _check_identity(values, shown)
    return Config(**values, config_file=str(path) if path.exists() else None)


def _under_current_names(found: dict[str, tuple[Any, str]]) -> dict[str, tuple[Any, str]]:
    """Settings given under an option's old name count under its new one, unless the new
    one is given too; the label keeps the name the contributor wrote, for messages."""
    current = {key: value for key, value in found.items() if key not in _BY_ALIAS}
    for alias, option in _BY_ALIAS.items():
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
    except _Invalid as invalid:
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
        verbose = _parse(_switch, *source["verbose"]) if "verbose" in source else False
        quiet = _parse(_switch, *source["quiet"]) if "quiet" in source else False
        if verbose and quiet:
            raise ConfigError(
                f"{source['verbose'][1]} and {source['quiet'][1]} are both set; choose one"
            )
        if "verbose" in source or "quiet" in source:
            return "verbose" if verbose else "quiet" if quiet else "normal"
    return "normal"


def _check_identity(values: dict[str, Any], file_name: str) -> None:
    def where(key: str) -> str:
        option = _BY_KEY[key]
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
