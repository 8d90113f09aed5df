"""Settings for KoboldAI Cluster: every value from the environment (read by `koboldcluster/env.py`;
the cluster's own rules, `KOBOLDCLUSTER`, in `koboldcluster/rules.py`).

The defaults run a whole cluster on one machine (SQLite under `var/`, local-memory cache,
django-q2 on the ORM broker). Production sets DATABASE_URL, REDIS_URL and SECRET_KEY.
"""

from __future__ import annotations

import os
import secrets

import dj_database_url

from koboldcluster.env import BASE_DIR, VAR_DIR, env_bool, env_int  # noqa: F401 (settings)

# The cluster's own rules, each from its environment variable.
from koboldcluster.rules import KOBOLDCLUSTER  # noqa: F401 (a setting)


def _secret_key() -> str:
    """Use SECRET_KEY when set; otherwise generate one once and keep it in var/."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = VAR_DIR / "secret_key"
    if not path.exists():
        # O_EXCL: two processes starting at once must not write two different keys.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "*").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

INSTALLED_APPS = [
    # First, so that its `runserver` (the ASGI application, koboldcluster/asgi.py) is the one
    # `manage.py runserver` runs, not staticfiles' or Django's (WSGI).
    "koboldcluster",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "accounts",
    "servers",
    "generations",
    "stats",
    "benchmarks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "koboldcluster.metrics.LatencyMiddleware",
    "koboldcluster.middleware.StaticFilesMiddleware",
    "koboldcluster.middleware.ApiMiddleware",
    "koboldcluster.clients.ClientAddressMiddleware",
    "koboldcluster.outage.DatabaseOutageMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "koboldcluster.urls"
ASGI_APPLICATION = "koboldcluster.asgi.application"
# API clients POST to exact paths; a redirect to a slashed URL would turn their POST into a GET.
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------

DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Django's backend with each statement's placeholders converted once (its docstring).
    DATABASES["default"]["ENGINE"] = "koboldcluster.sqlite_backend"
    DATABASES["default"]["OPTIONS"] = {
        # Writers take the lock when their transaction starts and wait for it (timeout) instead
        # of failing with "database is locked" halfway through.
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        # WAL lets readers run beside the one writer; secure_delete zeroes the bytes of deleted
        # prompts so wiped text does not linger in free pages.
        "init_command": (
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;"
        ),
    }
    # A file, not the shared-cache memory database: tests open it from threads and processes.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("KOBOLDCLUSTER_TEST_SQLITE") or str(VAR_DIR / "test-db.sqlite3")
    }
    # Kept between requests where one thread serves many (runserver, WSGI, the benchmark):
    # opening a connection and applying its PRAGMAs costs a tenth of a request's CPU.
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("CONN_MAX_AGE", 600)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
elif os.environ.get("KOBOLDCLUSTER_SERVING") == "asgi":  # set by koboldcluster/asgi.py
    # A web process runs the synchronous part of every request on its one sync thread
    # (koboldcluster/asgi.py), so one persistent connection serves all of them, kept between
    # requests and while pops wait. No health check before each request (a round trip, a
    # tenth of a status poll's CPU): after a database restart the first request of each web
    # process gets a 503, and its broken connection is dropped at the end of that request.
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("CONN_MAX_AGE", 600)
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("CONN_MAX_AGE", 60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

# --- Cache, task queue ----------------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            # One pool per process, not per request (koboldcluster/redis_pool.py).
            "OPTIONS": {"pool_class": "koboldcluster.redis_pool.SharedConnectionPool"},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

Q_CLUSTER = {
    "name": "koboldcluster",
    "workers": env_int("Q_WORKERS", 1, minimum=1),
    "timeout": 60,
    "retry": 120,  # must exceed timeout, or a slow task runs twice
    "catch_up": False,
    "poll": 1.0,
    **({"redis": REDIS_URL} if REDIS_URL else {"orm": "default"}),
}

# --- Passwords, i18n, static ----------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS: list[dict] = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Serve the admin's assets straight from the installed apps: no collectstatic step to forget.
WHITENOISE_USE_FINDERS = True

# --- API ------------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["koboldcluster.parsers.LenientJSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "koboldcluster.parsers.JSONOnlyNegotiation",
    # Only the `apikey` header: no session authentication, so the API needs no CSRF token
    # (the admin keeps Django's own session login and CSRF protection).
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    # Views that set `throttle_scope` are rate limited per address and per account.
    "DEFAULT_THROTTLE_CLASSES": [
        "koboldcluster.throttling.AddressRateThrottle",
        "koboldcluster.throttling.AccountRateThrottle",
    ],
    # Legacy: believe the N-th X-Forwarded-For entry from the end, from any peer. Prefer
    # KOBOLDCLUSTER_TRUSTED_PROXIES (koboldcluster/clients.py), which wins when set.
    "NUM_PROXIES": env_int("KOBOLDCLUSTER_NUM_PROXIES", 0),
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "koboldcluster.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "koboldcluster.openapi.ClusterAutoSchema",
}

# The OpenAPI schema at /api/schema and Swagger UI at /api/, with its assets served by the
# cluster itself (drf-spectacular-sidecar): the docs work offline and load nothing from a CDN.
SPECTACULAR_SETTINGS = {
    "TITLE": "KoboldAI Cluster API",
    "DESCRIPTION": (
        "Two APIs over one queue and one ledger: the original KoboldAI cluster API (`/generate/…`, "
        "`/servers`, `/usage`, `/contributions`) and the AI Horde v2 text API (`/api/v2/…`), so "
        "AI Horde clients that take a base URL work once pointed here: horde-sdk "
        "(`AI_HORDE_URL=<this address>/api/`), the JavaScript client `@zeldafan0225/ai_horde` "
        "(`api_route: <this address>/api/v2`) and AI Horde bridges. KoboldAI Lite and "
        "SillyTavern have the AI Horde's address written into their code: they need their "
        "source changed to use this cluster.\n\n"
        "**Kudos are tokens.** A user's `kudos` is their balance in tokens: the tokens their "
        "servers generated for others, minus the tokens their requests received, plus kudos "
        "transfers received, minus those sent. A submit's `reward` is the tokens of that "
        "generation (a quarter of its characters, rounded up, at most the request's "
        "`max_length`); the requester is charged the same tokens. The balance orders the "
        "queue.\n\nAuthentication: the `apikey` header (`0000000000` is the anonymous user). "
        'Every error is JSON `{"message", "rc"}`.\n\n'
        "Front-ends connect by URL alone through the KoboldAI API (`/api/v1/…`, `/api/extra/…`) "
        "and the OpenAI-compatible API (`/v1/…`, errors in OpenAI's shape): each request waits "
        "for its generation; the key goes in `Authorization: Bearer`."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SORT_OPERATIONS": False,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "koboldcluster.openapi.add_common_errors",
    ],
}

# --- Logging: one line per event, never prompt text -----------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"client_errors": {"()": "koboldcluster.logs.ClientErrorsOneLine"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["client_errors"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
