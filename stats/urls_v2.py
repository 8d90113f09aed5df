from django.urls import path

from stats import views_v2

urlpatterns = [
    path("stats/text/totals", views_v2.TotalsView.as_view()),
    path("stats/text/models", views_v2.ModelsView.as_view()),
]
