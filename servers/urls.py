from django.urls import path

from servers import views

urlpatterns = [
    path("servers", views.ServerListView.as_view()),
    path("servers/<str:server_id>", views.ServerDetailView.as_view()),
    path("models", views.ModelListView.as_view()),
]
