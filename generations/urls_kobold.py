"""The KoboldAI API, under /api/ (v1, its alias latest, and KoboldCpp's extra).

The latest/ aliases are left out of the OpenAPI schema: they are the v1 endpoints again.
"""

from django.urls import path

from generations import views_kobold, views_kobold_extra

urlpatterns = [
    path("v1/generate", views_kobold.GenerateView.as_view()),
    path("latest/generate", views_kobold.GenerateView.as_view(schema=None)),
    path("v1/model", views_kobold.ModelView.as_view()),
    path("latest/model", views_kobold.ModelView.as_view(schema=None)),
    path("v1/config/max_length", views_kobold.MaxLengthView.as_view()),
    path("latest/config/max_length", views_kobold.MaxLengthView.as_view(schema=None)),
    path("v1/config/max_context_length", views_kobold.MaxContextLengthView.as_view()),
    path(
        "latest/config/max_context_length", views_kobold.MaxContextLengthView.as_view(schema=None)
    ),
    path("v1/info/version", views_kobold.InfoVersionView.as_view()),
    path("latest/info/version", views_kobold.InfoVersionView.as_view(schema=None)),
    path("extra/version", views_kobold.ExtraVersionView.as_view()),
    path("extra/abort", views_kobold.AbortView.as_view()),
    path("extra/generate/stream", views_kobold.StreamView.as_view()),
    path("extra/generate/check", views_kobold.CheckView.as_view()),
    path("extra/tokencount", views_kobold.TokenCountView.as_view()),
    path("extra/true_max_context_length", views_kobold_extra.TrueMaxContextLengthView.as_view()),
    path("extra/preloadstory", views_kobold_extra.PreloadStoryView.as_view()),
    path("extra/perf", views_kobold_extra.PerfView.as_view()),
]
