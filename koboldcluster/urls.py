"""URL map. API paths have no trailing slash and never redirect.

`/api/` is the OpenAPI documentation (Swagger UI), `/api/schema` the schema; the AI Horde v2
API lives under `/api/v2/`, so horde-sdk's `AI_HORDE_URL=http://host:port/api/` joins to it.
The KoboldAI API answers under `/api/v1/`, `/api/latest/` and `/api/extra/`, the
OpenAI-compatible API under `/v1/`.
"""

from koboldcluster import routes

# Every endpoint is declared once, in the route table (koboldcluster/routes.py).
urlpatterns = routes.urlpatterns()

handler400 = "koboldcluster.errors.json_400"
handler403 = "koboldcluster.errors.json_403"
handler404 = "koboldcluster.errors.json_404"
handler500 = "koboldcluster.errors.json_500"
