"""The AI Horde v2 endpoints about accounts, under /api/v2/ (other apps add their own)."""

from django.urls import path

from accounts import views_v2

urlpatterns = [
    path("register", views_v2.RegisterView.as_view()),
    path("apikeys", views_v2.ApiKeyListView.as_view()),
    path("apikeys/<int:key_id>", views_v2.ApiKeyDetailView.as_view()),
    path("users", views_v2.UserListView.as_view()),
    path("users/<str:user_id>", views_v2.UserDetailView.as_view()),
    path("kudos/transfer", views_v2.KudosTransferView.as_view()),
    path("find_user", views_v2.FindUserView.as_view()),
]
