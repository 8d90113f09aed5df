from django.urls import path

from accounts import pages, views

urlpatterns = [
    path("usage", views.UsageView.as_view()),
    path("contributions", views.ContributionsView.as_view()),
    path("register", pages.register, name="register"),
]
