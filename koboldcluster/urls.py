"""URL map. API paths have no trailing slash and never redirect."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("generations.urls")),
    path("", include("servers.urls")),
    path("", include("accounts.urls")),
    path("api/v2/", include("accounts.urls_v2")),
]

handler400 = "koboldcluster.errors.json_400"
handler403 = "koboldcluster.errors.json_403"
handler404 = "koboldcluster.errors.json_404"
handler500 = "koboldcluster.errors.json_500"
