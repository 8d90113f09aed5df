from django.urls import path

from generations import views
from generations.long_poll import long_poll

urlpatterns = [
    path("generate/prompt", views.PromptCreateView.as_view()),
    path("generate/prompt/<str:prompt_id>", views.PromptStatusView.as_view()),
    path("generate/pop", long_poll(views.PopView)),
    path("generate/submit", views.SubmitView.as_view()),
]
