"""Every endpoint of the cluster, declared once (issue 24): the route table.

Each row says where an endpoint lives and how the one entry (`koboldcluster.asgi`) treats it;
everything that needs a route derives from this table and writes none itself:

- the URL patterns (`koboldcluster/urls.py`, in the table's order: the busiest first, since
  every request walks the list up to its match);
- the direct lane's routes (`koboldcluster/direct.py`, the rows with `lane`);
- the long-poll pops that may be held (`koboldcluster/holding.py`, `holds`);
- the waiting endpoints, which take Django's async chain (`koboldcluster/asgi.py`, `waits`);
- the liveness probe, answered on the event loop (`koboldcluster/liveness.py`, `on_loop`);
- the latency histograms (`koboldcluster/metrics.py`, `metric`, labelled with the `face`);
- which answers the suite checks against the OpenAPI schema (`koboldcluster/schema_check.py`).

`koboldcluster/tests/test_routes.py` fails when a route string appears in code anywhere else.

To add an endpoint: add one `Endpoint` row below, next to its face's others, with
- `path`: Django's route syntax without the leading slash (`api/v2/things/<str:thing_id>`);
- `view`: the dotted path of its view (a class-based view, made with `as_view(**as_view)`, a
  view function, or `django.contrib.admin.site.urls`);
- `face`: the API it belongs to (ORIGINAL, V2, KOBOLD, OPENAI), or OPERATOR, PAGE or DOCS;
- `name` if a page or `reverse()` needs one;
and only if it needs them: `lane` (the direct lane answers it: its view must have the
lane's `reply`; see `koboldcluster/direct.py` and add its cases to `test_direct.py`),
`holds` (a pop whose view may hold its answer), `waits` (an async view that waits for a
generation), `on_loop` (a GET whose view touches no database, answered on the event loop:
the liveness probe), `metric` (POP or SUBMIT: timed by that histogram). Clients of the API (tests,
benchmarks, the bridge) write its paths as any client does.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

# The faces: the four APIs, the operators' endpoints, the pages for people, the API's docs.
ORIGINAL, V2, KOBOLD, OPENAI = "original", "v2", "kobold", "openai"
OPERATOR, PAGE, DOCS = "operator", "page", "docs"
API_FACES = frozenset({ORIGINAL, V2, KOBOLD, OPENAI})

# The latency histograms an endpoint may be timed by (koboldcluster.metrics).
POP, SUBMIT = "pop", "submit"

# The API's paths (authenticated by the `apikey` header alone, CORS on every answer, a JSON
# 404 for unknown paths), which skip the middleware of the pages (koboldcluster.asgi).
API_PREFIXES = ("/generate/", "/api/v1/", "/api/v2/", "/api/latest/", "/api/extra/", "/v1/")
# KoboldAI's `latest` is its `v1` again (rows marked _HIDDEN), documented once.
KOBOLD_V1, KOBOLD_ALIAS = "/api/v1/", "/api/latest/"
# The pages for people, with sessions, logins and CSRF: no CORS there (koboldcluster.middleware).
PAGE_PREFIXES = ("/admin/", "/register", "/static/")


@dataclass(frozen=True)
class Lane:
    """How the direct lane answers an endpoint: `method`, then the view's `reply` (a POST's
    gets the validated body and the request, a GET's the last path segment, through `parse`
    if given), `takes` (a dotted path: which bodies it takes, the rest left to Django) and
    `status` (the view's method naming a POST's status, 200 without)."""

    method: str
    parse: str | None = None
    takes: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class Endpoint:
    path: str
    view: str
    face: str
    name: str | None = None
    lane: Lane | None = None
    holds: bool = False
    waits: bool = False
    on_loop: bool = False
    metric: str | None = None
    regex: bool = False  # `path` is a regular expression (re_path)
    as_view: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The path as requests carry it (a parametrised one: up to its parameter)."""
        return "/" + self.path.split("<", 1)[0]


# KoboldAI's `latest/` aliases: the v1 endpoints again, left out of the schema.
_HIDDEN = {"schema": None}
_POPPED = "generations.long_poll.does_not_wait"
_PROMPT_ID = "generations.api.fields.prompt_uuid"

TABLE: tuple[Endpoint, ...] = (
    Endpoint("admin/", "django.contrib.admin.site.urls", PAGE),
    Endpoint("healthz", "koboldcluster.views_health.HealthView", OPERATOR, on_loop=True),
    Endpoint("readyz", "koboldcluster.views_health.ReadyView", OPERATOR),
    # The AI Horde v2 API.
    Endpoint("api/v2/generate/text/async", "generations.api.v2.views.TextAsyncView", V2,
             lane=Lane("POST", status="status_for")),
    Endpoint("api/v2/generate/text/status/<str:prompt_id>",
             "generations.api.v2.views.TextStatusView", V2, lane=Lane("GET", parse=_PROMPT_ID)),
    Endpoint("api/v2/generate/text/pop", "generations.api.v2.serve.TextPopView", V2,
             lane=Lane("POST", takes=_POPPED), holds=True, metric=POP),
    Endpoint("api/v2/generate/text/submit", "generations.api.v2.serve.TextSubmitView", V2,
             lane=Lane("POST"), metric=SUBMIT),
    Endpoint("api/v2/generate/text/progress", "generations.api.progress.TextProgressView", V2,
             lane=Lane("POST")),
    Endpoint("api/v2/generate/text/rate/<str:prompt_id>",
             "generations.api.ratings.HordeRateView", V2),
    Endpoint("api/v2/status/heartbeat", "generations.api.v2.status.HeartbeatView", V2),
    Endpoint("api/v2/status/modes", "generations.api.v2.status.ModesView", V2),
    Endpoint("api/v2/status/news", "generations.api.v2.status.NewsView", V2),
    Endpoint("api/v2/status/performance", "generations.api.v2.status.PerformanceView", V2),
    Endpoint("api/v2/status/models", "generations.api.v2.status.ModelListView", V2,
             name="v2-models"),
    Endpoint("api/v2/status/models/<path:name>", "generations.api.v2.status.ModelDetailView",
             V2),
    Endpoint("api/v2/workers", "servers.api.v2.views.WorkerListView", V2),
    Endpoint("api/v2/workers/name/<str:name>", "servers.api.v2.views.WorkerByNameView", V2),
    Endpoint("api/v2/workers/<str:server_id>", "servers.api.v2.views.WorkerDetailView", V2),
    Endpoint("api/v2/register", "accounts.api.v2.views.RegisterView", V2),
    Endpoint("api/v2/apikeys", "accounts.api.v2.views.ApiKeyListView", V2),
    Endpoint("api/v2/apikeys/<int:key_id>", "accounts.api.v2.views.ApiKeyDetailView", V2),
    Endpoint("api/v2/users", "accounts.api.v2.views.UserListView", V2),
    Endpoint("api/v2/users/<str:user_id>", "accounts.api.v2.views.UserDetailView", V2),
    Endpoint("api/v2/kudos/transfer", "accounts.api.v2.views.KudosTransferView", V2),
    Endpoint("api/v2/find_user", "accounts.api.v2.views.FindUserView", V2),
    Endpoint("api/v2/stats/text/totals", "stats.api.v2.views.TotalsView", V2, name="v2-totals"),
    Endpoint("api/v2/stats/text/models", "stats.api.v2.views.ModelsView", V2),
    # The original API.
    Endpoint("generate/prompt", "generations.api.original.views.PromptCreateView", ORIGINAL,
             lane=Lane("POST")),
    Endpoint("generate/prompt/<str:prompt_id>", "generations.api.original.views.PromptStatusView",
             ORIGINAL, lane=Lane("GET", parse=_PROMPT_ID)),
    Endpoint("generate/pop", "generations.api.original.views.PopView", ORIGINAL,
             lane=Lane("POST", takes=_POPPED), holds=True, metric=POP),
    Endpoint("generate/submit", "generations.api.original.views.SubmitView", ORIGINAL,
             lane=Lane("POST"), metric=SUBMIT),
    Endpoint("generate/progress", "generations.api.progress.ProgressView", ORIGINAL,
             lane=Lane("POST")),
    Endpoint("generate/rate/<str:prompt_id>", "generations.api.ratings.OriginalRateView",
             ORIGINAL),
    # KoboldCpp's image models, which KoboldAI Lite asks for on connect: none here.
    Endpoint("sdapi/v1/sd-models", "generations.api.kobold.extra.SdModelsView", KOBOLD),
    Endpoint("servers", "servers.api.original.views.ServerListView", ORIGINAL),
    Endpoint("servers/<str:server_id>", "servers.api.original.views.ServerDetailView", ORIGINAL),
    Endpoint("models", "servers.api.original.views.ModelListView", ORIGINAL),
    Endpoint("usage", "accounts.api.original.views.UsageView", ORIGINAL),
    Endpoint("contributions", "accounts.api.original.views.ContributionsView", ORIGINAL),
    Endpoint("register", "accounts.pages.register", PAGE, name="register"),
    Endpoint("", "stats.pages.status_page", PAGE, name="status"),
    Endpoint("status/live", "stats.pages.status_live", PAGE, name="status-live"),
    Endpoint("readme", "stats.pages.readme", PAGE, name="readme"),
    Endpoint("metrics", "stats.metrics.metrics_view", OPERATOR, name="metrics"),
    # The KoboldAI API: v1, its alias latest, and KoboldCpp's extra.
    Endpoint("api/v1/generate", "generations.api.kobold.views.GenerateView", KOBOLD, waits=True),
    Endpoint("api/latest/generate", "generations.api.kobold.views.GenerateView", KOBOLD, waits=True,
             as_view=_HIDDEN),
    Endpoint("api/v1/model", "generations.api.kobold.views.ModelView", KOBOLD),
    Endpoint("api/latest/model", "generations.api.kobold.views.ModelView", KOBOLD, as_view=_HIDDEN),
    Endpoint("api/v1/config/max_length", "generations.api.kobold.views.MaxLengthView", KOBOLD),
    Endpoint("api/latest/config/max_length", "generations.api.kobold.views.MaxLengthView", KOBOLD,
             as_view=_HIDDEN),
    Endpoint("api/v1/config/max_context_length",
             "generations.api.kobold.views.MaxContextLengthView", KOBOLD),
    Endpoint("api/latest/config/max_context_length",
             "generations.api.kobold.views.MaxContextLengthView", KOBOLD, as_view=_HIDDEN),
    Endpoint("api/v1/info/version", "generations.api.kobold.views.InfoVersionView", KOBOLD),
    Endpoint("api/latest/info/version", "generations.api.kobold.views.InfoVersionView", KOBOLD,
             as_view=_HIDDEN),
    Endpoint("api/extra/version", "generations.api.kobold.views.ExtraVersionView", KOBOLD),
    Endpoint("api/extra/abort", "generations.api.kobold.views.AbortView", KOBOLD),
    Endpoint("api/extra/rate", "generations.api.ratings.KoboldRateView", KOBOLD),
    Endpoint("api/extra/generate/stream", "generations.api.kobold.views.StreamView", KOBOLD,
             waits=True),
    Endpoint("api/extra/generate/check", "generations.api.kobold.views.CheckView", KOBOLD),
    Endpoint("api/extra/tokencount", "generations.api.kobold.views.TokenCountView", KOBOLD),
    Endpoint("api/extra/true_max_context_length",
             "generations.api.kobold.extra.TrueMaxContextLengthView", KOBOLD),
    Endpoint("api/extra/preloadstory", "generations.api.kobold.extra.PreloadStoryView", KOBOLD),
    Endpoint("api/extra/perf", "generations.api.kobold.extra.PerfView", KOBOLD),
    # The OpenAI-compatible API; any other path under v1/ is a 404 in OpenAI's shape.
    Endpoint("v1/models", "generations.api.openai.views.ModelsView", OPENAI),
    Endpoint("v1/completions", "generations.api.openai.views.CompletionsView", OPENAI, waits=True),
    Endpoint("v1/chat/completions", "generations.api.openai.views.ChatCompletionsView", OPENAI,
             waits=True),
    Endpoint(r"^v1/(?P<rest>.*)$", "generations.api.openai.views.NotFoundView", OPENAI, regex=True),
    # The API's documentation: the OpenAPI schema and Swagger UI, which reads it.
    Endpoint("api/schema", "drf_spectacular.views.SpectacularAPIView", DOCS, name="schema"),
    Endpoint("api/", "drf_spectacular.views.SpectacularSwaggerView", DOCS, name="docs",
             as_view={"url_name": "schema"}),
)  # fmt: skip


def _check(table: tuple[Endpoint, ...]) -> None:
    """What the entry relies on: the held, waiting and lane paths are matched by their
    literal path (the lane's GETs by the part before their one last parameter)."""
    for endpoint in table:
        literal = "<" not in endpoint.path and not endpoint.regex
        if (endpoint.holds or endpoint.waits or endpoint.on_loop) and not literal:
            raise ValueError(f"{endpoint.path}: a held, waiting or loop path takes no parameters")
        if endpoint.lane is not None and endpoint.lane.method == "GET":
            if literal or not endpoint.path.endswith(">") or endpoint.path.count("<") != 1:
                raise ValueError(f"{endpoint.path}: a lane GET ends in its one parameter")
        elif endpoint.lane is not None and not literal:
            raise ValueError(f"{endpoint.path}: a lane POST takes no parameters")


_check(TABLE)


def held_paths() -> frozenset[str]:
    """The paths (`//` merged) whose views may ask to be held: the long-poll pops."""
    return frozenset(endpoint.url for endpoint in TABLE if endpoint.holds)


def waiting_paths() -> frozenset[str]:
    """The paths of the async views that wait for a generation or stream it."""
    return frozenset(endpoint.url for endpoint in TABLE if endpoint.waits)


def loop_paths() -> frozenset[str]:
    """The paths answered on the event loop: views that touch no database (liveness)."""
    return frozenset(endpoint.url for endpoint in TABLE if endpoint.on_loop)


def lane_endpoints() -> list[Endpoint]:
    return [endpoint for endpoint in TABLE if endpoint.lane is not None]


def timed() -> dict[str, tuple[str, str]]:
    """URL route (Django's `resolver_match.route`) -> (histogram, API label)."""
    return {e.path: (e.metric, e.face) for e in TABLE if e.metric is not None}


def is_undocumented(path: str) -> bool:
    """Whether answers at `path` are outside the documented APIs (pages, the docs, the
    operators' endpoints): the schema check leaves them alone."""
    return path.startswith(PAGE_PREFIXES) or path in _UNDOCUMENTED


_UNDOCUMENTED = frozenset(e.url for e in TABLE if e.face not in API_FACES)


def resolve(dotted: str) -> Any:
    """The object a dotted path names, through modules and then attributes
    (`django.contrib.admin.site.urls` is the `urls` of the module's `site`)."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ImportError(dotted)


def urlpatterns() -> list[Any]:
    """Django's URL patterns, one per row, in the table's order."""
    from django.urls import path, re_path

    patterns = []
    for endpoint in TABLE:
        view = resolve(endpoint.view)
        if hasattr(view, "as_view"):
            view = view.as_view(**endpoint.as_view)
        make = re_path if endpoint.regex else path
        patterns.append(make(endpoint.path, view, name=endpoint.name))
    return patterns
