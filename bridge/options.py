"""What the bridge can be told (`bridge/config.py` reads it): the `Config` it ends up with,
and every public option declared once in `OPTIONS`, with its flag, variable, file key and the
parser that validates its value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_CONFIG_FILE = "bridgeData.toml"
ENV_PREFIX = "BRIDGE_"
MAX_THREADS = 50  # the cluster (like the AI Horde) refuses more threads per server
# The --protocol values, as registered in bridge.cluster.PROTOCOLS (a test keeps them equal;
# listed here so that reading the settings does not need the HTTP code).
PROTOCOL_NAMES = ("original", "horde")
# The --backend values: which API family to use; unset, the bridge detects it.
BACKEND_PROTOCOLS = ("kobold", "openai")


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


class Invalid(ValueError):
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
        raise Invalid("an http:// or https:// URL", hint)
    # The legacy bridge joined URLs with "+", so a trailing slash produced "//generate/pop".
    return text.rstrip("/")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        # TOML reads password = 1234 as a number: the fix is quotes.
        number = isinstance(value, int | float) and not isinstance(value, bool)
        raise Invalid("a non-empty text", " (put it in quotes)" if number else "")
    return value.strip()


def seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise Invalid("a number of seconds greater than 0")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise Invalid("a number of seconds greater than 0") from None
    if not seconds > 0 or seconds == float("inf"):
        raise Invalid("a number of seconds greater than 0")
    return seconds


def _seconds_or_zero(value: Any) -> float:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            if float(value) == 0:
                return 0.0
        except ValueError:
            pass
    try:
        return seconds(value)
    except Invalid:
        raise Invalid("a number of seconds, 0 or more") from None


def _wait_seconds(value: Any) -> float:
    try:
        seconds = _seconds_or_zero(value)
    except Invalid:
        seconds = -1.0
    if not 0 <= seconds <= 30:
        raise Invalid("a number of seconds from 0 to 30")
    return seconds


def _whole(low: int, high: int | None) -> Callable[[Any], int]:
    wanted = f"a whole number from {low} to {high}" if high else f"a whole number of at least {low}"

    def parse(value: Any) -> int:
        if isinstance(value, bool | float):
            raise Invalid(wanted)
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise Invalid(wanted) from None
        if number < low or (high is not None and number > high):
            raise Invalid(wanted)
        return number

    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    wanted = "one of " + ", ".join(choices)

    def parse(value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise Invalid(wanted)
        return value.strip().lower()

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise Invalid("true or false (1/0, yes/no, on/off)")


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
        seconds,
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
    Option("verbose", "--verbose", "log more: every request and retry", switch, short="-v"),
    Option(
        "quiet", "--quiet", "log only warnings, errors and the final summary", switch, short="-q"
    ),
    Option(
        "log_prompts",
        "--log-prompts",
        "also log each job's prompt and generated text (off by default: they are private)",
        switch,
    ),
)

BY_KEY = {option.key: option for option in OPTIONS}
BY_ALIAS = {option.alias: option for option in OPTIONS if option.alias}

# Hidden tuning settings (see Config): environment only, seconds.
TUNING = ("backoff_base", "backoff_max", "refresh_interval", "summary_interval", "kai_timeout")
