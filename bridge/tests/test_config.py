from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bridge.config import OPTIONS, Config, ConfigError, build_parser, load_config

BRIDGE_DIR = Path(__file__).resolve().parents[1]
IDENTITY = ["--name", "srv", "--apikey", "key"]


def load(tmp_path: Path, argv: list[str] = (), env: dict[str, str] | None = None, toml: str = ""):
    if toml:
        (tmp_path / "bridgeData.toml").write_text(toml, encoding="utf-8")
    return load_config(list(argv), env or {}, tmp_path)


def error_of(tmp_path: Path, argv: list[str] = (), env=None, toml: str = "") -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, argv, env, toml)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults(tmp_path):
    config = load(tmp_path, IDENTITY)
    assert config.cluster_url == "http://127.0.0.1:5001"
    assert config.backend_url == "http://127.0.0.1:5000"
    assert (config.backend, config.backend_apikey, config.model_name) == (None, None, None)
    assert config.pause_when_busy == 0.0
    assert config.pop_wait == 20.0
    assert (config.interval, config.threads, config.verbosity) == (1.0, 1, "normal")
    assert config.max_length is None and config.max_context_length is None
    assert config.log_prompts is False
    assert config.config_file is None
    assert config.protocol == "original"


# (key, flag value, env value, file value as TOML, expected from each source)
PRECEDENCE = [
    ("cluster_url", "http://flag:1", "http://env:2", '"http://file:3"'),
    ("backend_url", "http://flag:1", "http://env:2", '"http://file:3"'),
    ("backend_apikey", "flag-bk", "env-bk", '"file-bk"'),
    ("model_name", "flag/model", "env/model", '"file/model"'),
    ("pause_when_busy", "0", "2.5", "60"),
    ("pop_wait", "0", "5", "30"),
    ("name", "flag-name", "env-name", '"file-name"'),
    ("username", "flag-user", "env-user", '"file-user"'),
    ("password", "flag-pw", "env-pw", '"file-pw"'),
    ("apikey", "flag-key", "env-key", '"file-key"'),
    ("interval", "0.25", "0.5", "2"),
    ("threads", "3", "4", "5"),
    ("max_length", "100", "200", "300"),
    ("max_context_length", "1000", "1500", "1800"),
]


@pytest.mark.parametrize(("key", "flag_value", "env_value", "file_value"), PRECEDENCE)
def test_flag_beats_env_beats_file(tmp_path, key, flag_value, env_value, file_value):
    option = next(option for option in OPTIONS if option.key == key)
    # Enough identity for the config to be valid whichever key is under test.
    bases = {"name": "apikey = 'k'\n", "apikey": "name = 'n'\nusername = 'u'\npassword = 'p'\n"}
    toml = bases.get(key, "name = 'n'\napikey = 'k'\n") + f"{key} = {file_value}\n"
    flag, env = [option.flag, flag_value], {option.env: env_value}

    from_file = getattr(load(tmp_path, [], {}, toml), key)
    from_env = getattr(load(tmp_path, [], env, toml), key)
    from_flag = getattr(load(tmp_path, flag, env, toml), key)

    parse = option.parse
    assert from_file == parse(tomllib.loads(f"v = {file_value}")["v"])
    assert from_env == parse(env_value)
    assert from_flag == parse(flag_value)
    assert len({from_file, from_env, from_flag}) == 3


def test_switches_from_each_source(tmp_path):
    assert load(tmp_path, [*IDENTITY, "--log-prompts"]).log_prompts is True
    assert load(tmp_path, IDENTITY, {"BRIDGE_LOG_PROMPTS": "yes"}).log_prompts is True
    assert load(tmp_path, IDENTITY, toml="log_prompts = true").log_prompts is True
    assert (
        load(tmp_path, IDENTITY, {"BRIDGE_LOG_PROMPTS": "off"}, "log_prompts = true").log_prompts
        is False
    )


def test_verbosity_is_one_setting_across_sources(tmp_path):
    assert load(tmp_path, [*IDENTITY, "-v"]).verbosity == "verbose"
    assert load(tmp_path, [*IDENTITY, "-q"]).verbosity == "quiet"
    assert load(tmp_path, IDENTITY, {"BRIDGE_QUIET": "1"}).verbosity == "quiet"
    # A -q on the command line wins over verbose = true in the file, and so does the env.
    assert load(tmp_path, [*IDENTITY, "-q"], toml="verbose = true").verbosity == "quiet"
    assert load(tmp_path, IDENTITY, {"BRIDGE_QUIET": "1"}, "verbose = true").verbosity == "quiet"
    assert load(tmp_path, IDENTITY, {"BRIDGE_VERBOSE": "0"}, "verbose = true").verbosity == "normal"


def test_config_option_chooses_the_file(tmp_path):
    (tmp_path / "other.toml").write_text('name = "from-other"\napikey = "k"\n')
    (tmp_path / "bridgeData.toml").write_text('name = "from-default"\napikey = "k"\n')
    assert load(tmp_path).name == "from-default"
    config = load(tmp_path, ["--config", "other.toml"])
    assert config.name == "from-other"
    assert config.config_file == str(tmp_path / "other.toml")


def test_trailing_slashes_are_removed(tmp_path):
    config = load(tmp_path, [*IDENTITY, "--cluster-url", "https://cluster.example/"])
    assert config.cluster_url == "https://cluster.example"


def test_empty_environment_variable_counts_as_unset(tmp_path):
    config = load(tmp_path, [], {"BRIDGE_NAME": "", "BRIDGE_APIKEY": "k"}, 'name = "file"')
    assert config.name == "file"


def test_hidden_tuning_comes_from_the_environment(tmp_path):
    env = {"BRIDGE_BACKOFF_BASE": "0.01", "BRIDGE_REFRESH_INTERVAL": "0.5"}
    config = load(tmp_path, IDENTITY, env)
    assert (config.backoff_base, config.refresh_interval) == (0.01, 0.5)
    assert config.backoff_max == Config.backoff_max


@pytest.mark.parametrize(
    ("argv", "env", "toml"),
    [
        (["--protocol", "horde"], {}, ""),
        ([], {"BRIDGE_PROTOCOL": "horde"}, ""),
        ([], {}, 'protocol = "horde"'),
        (["--protocol", "HORDE "], {}, ""),
    ],
)
def test_protocol_from_each_source(tmp_path, argv, env, toml):
    assert load(tmp_path, [*IDENTITY, *argv], env, toml).protocol == "horde"


def test_protocol_flag_beats_env_beats_file(tmp_path):
    toml = 'protocol = "horde"'
    assert load(tmp_path, IDENTITY, {"BRIDGE_PROTOCOL": "original"}, toml).protocol == "original"
    flag = [*IDENTITY, "--protocol", "horde"]
    assert load(tmp_path, flag, {"BRIDGE_PROTOCOL": "original"}, toml).protocol == "horde"


def test_horde_protocol_with_an_apikey_ignores_username_and_password(tmp_path):
    # The template's username and password lines may stay when a contributor switches.
    toml = 'protocol = "horde"\nusername = "u"\npassword = "p"\napikey = "k"\nname = "n"'
    config = load(tmp_path, toml=toml)
    assert (config.protocol, config.apikey) == ("horde", "k")


def test_apikey_alone_is_enough(tmp_path):
    config = load(tmp_path, ["--name", "s"], {"BRIDGE_APIKEY": "abc"})
    assert (config.apikey, config.username, config.password) == ("abc", None, None)


ERRORS = [
    ([], {}, "", "no server name: set --name, BRIDGE_NAME or name in bridgeData.toml"),
    (["--name", "s"], {}, "", "no credentials: set --username and --password (or --apikey)"),
    (["--name", "s", "--username", "u"], {}, "", "a username is set but no password: set"),
    (["--name", "s"], {"BRIDGE_PASSWORD": "p"}, "", "a password is set but no username: set"),
    (
        ["--name", "s", "--protocol", "horde"],
        {},
        "",
        "--protocol horde needs an API key of your account: set --apikey, BRIDGE_APIKEY or "
        "apikey in bridgeData.toml (a username and password are not used by the horde protocol)",
    ),
    (
        ["--name", "s", "--username", "u", "--password", "p"],
        {"BRIDGE_PROTOCOL": "horde"},
        "",
        "--protocol horde needs an API key of your account",
    ),
    (
        [*IDENTITY, "--protocol", "hord"],
        {},
        "",
        "--protocol must be one of original, horde, got 'hord'",
    ),
    (IDENTITY, {}, "protocol = 2", "protocol in bridgeData.toml must be one of original, horde"),
    (
        [*IDENTITY, "--kai-url", "localhost:5000"],
        {},
        "",
        "--kai-url must be an http:// or https:// URL, got 'localhost:5000' "
        "(did you mean http://localhost:5000?)",
    ),
    (
        [*IDENTITY, "--cluster-url", "ftp://x"],
        {},
        "",
        "--cluster-url must be an http:// or https:// URL, got 'ftp://x'",
    ),
    (
        IDENTITY,
        {"BRIDGE_INTERVAL": "soon"},
        "",
        "BRIDGE_INTERVAL must be a number of seconds greater than 0, got 'soon'",
    ),
    ([*IDENTITY, "--interval", "0"], {}, "", "--interval must be a number of seconds"),
    (IDENTITY, {}, "interval = -1", "interval in bridgeData.toml must be a number of seconds"),
    (
        [*IDENTITY, "--threads", "0"],
        {},
        "",
        "--threads must be a whole number from 1 to 50, got '0'",
    ),
    ([*IDENTITY, "--threads", "51"], {}, "", "--threads must be a whole number from 1 to 50"),
    (
        IDENTITY,
        {},
        "threads = 1.5",
        "threads in bridgeData.toml must be a whole number from 1 to 50, got 1.5",
    ),
    (IDENTITY, {}, "threads = true", "threads in bridgeData.toml must be a whole number"),
    (
        [*IDENTITY, "--max-length", "lots"],
        {},
        "",
        "--max-length must be a whole number of at least 1, got 'lots'",
    ),
    (
        IDENTITY,
        {"BRIDGE_MAX_CONTEXT_LENGTH": "0"},
        "",
        "BRIDGE_MAX_CONTEXT_LENGTH must be a whole number of at least 1",
    ),
    (
        ["--apikey", "k"],
        {},
        "name = 3",
        "name in bridgeData.toml must be a non-empty text, got 3 (put it in quotes)",
    ),
    (["--apikey", "k"], {}, 'name = "  "', "name in bridgeData.toml must be a non-empty text"),
    (
        IDENTITY,
        {"BRIDGE_VERBOSE": "maybe"},
        "",
        "BRIDGE_VERBOSE must be true or false (1/0, yes/no, on/off), got 'maybe'",
    ),
    (
        IDENTITY,
        {"BRIDGE_VERBOSE": "1", "BRIDGE_QUIET": "1"},
        "",
        "BRIDGE_VERBOSE and BRIDGE_QUIET are both set; choose one",
    ),
    (
        [*IDENTITY, "-v", "-q"],
        {},
        "",
        "argument -q/--quiet: not allowed with argument -v/--verbose",
    ),
    (
        [*IDENTITY, "--bogus"],
        {},
        "",
        "unrecognized arguments: --bogus (see python -m bridge --help)",
    ),
    ([*IDENTITY, "--threads"], {}, "", "argument --threads: expected one argument"),
    (IDENTITY, {}, "kai_ulr = 'http://x'", "unknown setting 'kai_ulr' in "),
    (IDENTITY, {}, "name = ", "is not valid TOML: "),
    (IDENTITY, {"BRIDGE_BACKOFF_BASE": "fast"}, "", "BRIDGE_BACKOFF_BASE must be a number"),
    ([*IDENTITY, "--config", "missing.toml"], {}, "", "config file not found: "),
]


@pytest.mark.parametrize(("argv", "env", "toml", "expected"), ERRORS)
def test_error_messages(tmp_path, argv, env, toml, expected):
    assert expected in error_of(tmp_path, argv, env, toml)


def test_a_bad_password_is_not_echoed(tmp_path):
    message = error_of(tmp_path, ["--name", "s", "--username", "u"], toml="password = 271828")
    assert message == (
        "password in bridgeData.toml must be a non-empty text, got a number (put it in quotes)"
    )
    assert "271828" not in message


def test_unknown_file_setting_suggests_the_right_name(tmp_path):
    message = error_of(tmp_path, IDENTITY, toml="backend_ulr = 'http://x'")
    assert message.endswith("(did you mean backend_url?)")


def test_toml_error_gives_the_file_and_position(tmp_path):
    message = error_of(tmp_path, IDENTITY, toml="name = 'x'\nthreads = = 2\n")
    assert message.startswith("bridgeData.toml is not valid TOML: ")
    assert message.endswith("(at line 2, column 11)")


def test_file_is_named_as_given_in_messages(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mine.toml").write_text("threads = 0\n")
    message = error_of(tmp_path, [*IDENTITY, "--config", "conf/mine.toml"])
    assert message == "threads in conf/mine.toml must be a whole number from 1 to 50, got 0"


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option.flag in text
    assert "--config" in text and "BRIDGE_" in text


def test_template_is_valid_and_documents_every_setting():
    template = (BRIDGE_DIR / "bridgeData.template.toml").read_text(encoding="utf-8")
    active = tomllib.loads(template)
    uncommented = tomllib.loads(
        "\n".join(line.removeprefix("# ") for line in template.splitlines() if " = " in line)
    )
    assert set(uncommented) == {option.key for option in OPTIONS}
    assert {"cluster_url", "backend_url", "name", "username", "password"} <= set(active)


def test_template_copied_as_is_is_refused_naming_the_setting(tmp_path):
    template = (BRIDGE_DIR / "bridgeData.template.toml").read_text(encoding="utf-8")
    assert error_of(tmp_path, toml=template) == (
        "name in bridgeData.toml is still the template's placeholder 'my-kobold-server': "
        "replace it with your own"
    )


@pytest.mark.parametrize(
    ("key", "placeholder", "label"),
    [
        ("name", "my-kobold-server", "--name"),
        ("username", "my-username", "username in bridgeData.toml"),
        ("password", "change-me", "BRIDGE_PASSWORD"),
        ("apikey", "your-22-character-key", "--apikey"),
    ],
)
def test_each_placeholder_is_refused_wherever_it_comes_from(tmp_path, key, placeholder, label):
    identity = {"name": "srv", "username": "u", "password": "p", "apikey": "k"}
    toml = "".join(f'{name} = "{value}"\n' for name, value in identity.items() if name != key)
    option = next(option for option in OPTIONS if option.key == key)
    argv, env = [], {}
    if label.startswith("--"):
        argv = [option.flag, placeholder]
    elif label.startswith("BRIDGE_"):
        env = {option.env: placeholder}
    else:
        toml += f'{key} = "{placeholder}"\n'
    message = error_of(tmp_path, argv, env, toml)
    assert message.startswith(f"{label} is still the template's placeholder {placeholder!r}")


def test_template_with_its_placeholders_replaced_loads(tmp_path):
    template = (BRIDGE_DIR / "bridgeData.template.toml").read_text(encoding="utf-8")
    for placeholder, own in (
        ("my-kobold-server", "bobs-3090"),
        ("my-username", "bob"),
        ("change-me", "a-real-password"),
    ):
        template = template.replace(f'"{placeholder}"', f'"{own}"')
    config = load(tmp_path, toml=template)
    assert (config.name, config.username, config.password) == (
        "bobs-3090",
        "bob",
        "a-real-password",
    )


@pytest.mark.parametrize(
    ("argv", "env", "toml"),
    [
        (["--kai-url", "http://old:1"], {}, ""),
        ([], {"BRIDGE_KAI_URL": "http://old:1"}, ""),
        ([], {}, 'kai_url = "http://old:1"\n'),
    ],
)
def test_kai_url_is_an_alias_of_backend_url(tmp_path, argv, env, toml):
    config = load(tmp_path, [*IDENTITY, *argv], env, toml)
    assert config.backend_url == "http://old:1"


def test_backend_flag_beats_env_beats_file(tmp_path):
    toml = 'backend = "openai"'
    assert load(tmp_path, IDENTITY, {}, toml).backend == "openai"
    assert load(tmp_path, IDENTITY, {"BRIDGE_BACKEND": "kobold"}, toml).backend == "kobold"
    flag = [*IDENTITY, "--backend", "openai"]
    assert load(tmp_path, flag, {"BRIDGE_BACKEND": "kobold"}, toml).backend == "openai"


def test_backend_url_beats_its_old_name(tmp_path):
    env = {"BRIDGE_KAI_URL": "http://old:1", "BRIDGE_BACKEND_URL": "http://new:2"}
    assert load(tmp_path, IDENTITY, env).backend_url == "http://new:2"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "grpc"], "--backend must be one of kobold, openai, got 'grpc'"),
        (
            ["--pause-when-busy", "-1"],
            "--pause-when-busy must be a number of seconds, 0 or more, got '-1'",
        ),
        (["--pop-wait", "31"], "--pop-wait must be a number of seconds from 0 to 30, got '31'"),
        (["--pop-wait", "soon"], "--pop-wait must be a number of seconds from 0 to 30, got 'soon'"),
    ],
)
def test_backend_settings_are_checked(tmp_path, argv, message):
    assert error_of(tmp_path, [*IDENTITY, *argv]) == message


def test_readme_documents_every_option():
    """The bridge's options table moved with the bridge's details to docs/bridge.md ("Options")."""
    page = (BRIDGE_DIR.parent / "docs" / "bridge.md").read_text(encoding="utf-8")
    table = page.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    for option in OPTIONS:
        for name in (option.flag, option.env, f"`{option.key}`"):
            assert name in table, name
