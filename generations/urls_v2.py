"""The AI Horde v2 generation endpoints, under /api/v2/."""

from django.urls import path

from generations import views_progress, views_v2, views_v2_serve, views_v2_status
from generations.long_poll import does_not_wait
from generations.views import prompt_uuid
from koboldcluster import direct

urlpatterns = [
    path("generate/text/async", views_v2.TextAsyncView.as_view()),
    path("generate/text/status/<str:prompt_id>", views_v2.TextStatusView.as_view()),
    path("generate/text/pop", views_v2_serve.TextPopView.as_view()),
    path("generate/text/submit", views_v2_serve.TextSubmitView.as_view()),
    path("generate/text/progress", views_progress.TextProgressView.as_view()),
    path("status/heartbeat", views_v2_status.HeartbeatView.as_view()),
    path("status/modes", views_v2_status.ModesView.as_view()),
    path("status/news", views_v2_status.NewsView.as_view()),
    path("status/performance", views_v2_status.PerformanceView.as_view()),
    path("status/models", views_v2_status.ModelListView.as_view()),
    path("status/models/<path:name>", views_v2_status.ModelDetailView.as_view()),
]

# The direct lane answers these without Django's request stack (koboldcluster/direct.py);
# a pop that asks to wait may be held: Django's way (koboldcluster.holding).
direct.add(
    "POST",
    "/api/v2/generate/text/async",
    direct.Route(
        views_v2.TextAsyncView,
        views_v2.TextAsyncView.reply,
        "api/v2/generate/text/async",
        status=views_v2.TextAsyncView.status_for,
    ),
)
direct.add(
    "POST",
    "/api/v2/generate/text/pop",
    direct.Route(
        views_v2_serve.TextPopView,
        views_v2_serve.TextPopView.reply,
        "api/v2/generate/text/pop",
        takes=does_not_wait,
    ),
)
direct.add(
    "POST",
    "/api/v2/generate/text/submit",
    direct.Route(
        views_v2_serve.TextSubmitView,
        views_v2_serve.TextSubmitView.reply,
        "api/v2/generate/text/submit",
    ),
)
direct.add(
    "GET",
    "/api/v2/generate/text/status/",
    direct.Route(
        views_v2.TextStatusView,
        views_v2.TextStatusView.reply,
        "api/v2/generate/text/status/<str:prompt_id>",
        parse=prompt_uuid,
    ),
)
direct.add(
    "POST",
    "/api/v2/generate/text/progress",
    direct.Route(
        views_progress.TextProgressView,
        views_progress.TextProgressView.reply,
        "api/v2/generate/text/progress",
    ),
)
