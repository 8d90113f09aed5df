from django.urls import path

from stats import metrics, pages

urlpatterns = [
    path("", pages.status_page, name="status"),
    path("status/live", pages.status_live, name="status-live"),
    path("readme", pages.readme, name="readme"),
    path("metrics", metrics.metrics_view, name="metrics"),
]
