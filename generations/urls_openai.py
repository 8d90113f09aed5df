"""The OpenAI-compatible API, under /v1/."""

from django.urls import path, re_path

from generations import views_openai

urlpatterns = [
    path("models", views_openai.ModelsView.as_view()),
    path("completions", views_openai.CompletionsView.as_view()),
    path("chat/completions", views_openai.ChatCompletionsView.as_view()),
    re_path(r"^(?P<rest>.*)$", views_openai.NotFoundView.as_view()),
]
