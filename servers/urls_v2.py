"""The AI Horde v2 worker and model endpoints, under /api/v2/."""

from django.urls import path

from servers import views_v2

urlpatterns = [
    path("workers", views_v2.WorkerListView.as_view()),
    path("workers/name/<str:name>", views_v2.WorkerByNameView.as_view()),
    path("workers/<str:server_id>", views_v2.WorkerDetailView.as_view()),
]
