from django.urls import path

from generations import views, views_progress

urlpatterns = [
    path("generate/prompt", views.PromptCreateView.as_view()),
    path("generate/prompt/<str:prompt_id>", views.PromptStatusView.as_view()),
    path("generate/pop", views.PopView.as_view()),
    path("generate/submit", views.SubmitView.as_view()),
    path("generate/progress", views_progress.ProgressView.as_view()),
]
