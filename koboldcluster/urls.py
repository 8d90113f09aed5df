"""URL map. API paths have no trailing slash and never redirect.

`/api/` is the OpenAPI documentation (Swagger UI), `/api/schema` the schema; the AI Horde v2
API lives under `/api/v2/`, so horde-sdk's `AI_HORDE_URL=http://host:port/api/` joins to it.
The KoboldAI API answers under `/api/v1/`, `/api/latest/` and `/api/extra/`, the
OpenAI-compatible API under `/v1/`.
"""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from koboldcluster import views_health

horde_v2 = [
    path("", include("generations.urls_v2")),
    path("", include("servers.urls_v2")),
    path("", include("accounts.urls_v2")),
    path("", include("stats.urls_v2")),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", views_health.HealthView.as_view()),
    path("readyz", views_health.ReadyView.as_view()),
    # The busiest first: every pop, submit and status poll walks the list up to its match.
    path("api/v2/", include(horde_v2)),
    path("", include("generations.urls")),
    path("", include("servers.urls")),
    path("", include("accounts.urls")),
    path("", include("stats.urls")),
    path("api/", include("generations.urls_kobold")),
    path("v1/", include("generations.urls_openai")),
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    path("api/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

handler400 = "koboldcluster.errors.json_400"
handler403 = "koboldcluster.errors.json_403"
handler404 = "koboldcluster.errors.json_404"
handler500 = "koboldcluster.errors.json_500"
