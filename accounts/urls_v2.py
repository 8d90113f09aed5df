"""The AI Horde v2 endpoints about accounts, under /api/v2/ (other apps add their own)."""

from django.urls import path

from accounts import views

urlpatterns = [
    path("register", views.RegisterView.as_view()),
    path("apikeys", views.ApiKeyListView.as_view()),
    path("apikeys/<int:key_id>", views.ApiKeyDetailView.as_view()),
    path("users", views.UserListView.as_view()),
    path("users/<str:user_id>", views.UserDetailView.as_view()),
    path("kudos/transfer", views.KudosTransferView.as_view()),
    path("find_user", views.FindUserView.as_view()),
]
