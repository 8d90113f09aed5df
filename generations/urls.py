from django.urls import path

from generations import views, views_kobold_extra, views_progress
from generations.long_poll import does_not_wait
from koboldcluster import direct

urlpatterns = [
    path("generate/prompt", views.PromptCreateView.as_view()),
    path("generate/prompt/<str:prompt_id>", views.PromptStatusView.as_view()),
    path("generate/pop", views.PopView.as_view()),
    path("generate/submit", views.SubmitView.as_view()),
    path("generate/progress", views_progress.ProgressView.as_view()),
    # KoboldCpp's image models, which KoboldAI Lite asks for on connect: none here.
    path("sdapi/v1/sd-models", views_kobold_extra.SdModelsView.as_view()),
]


# The direct lane answers these without Django's request stack (koboldcluster/direct.py).
direct.add(
    "POST",
    "/generate/prompt",
    direct.Route(views.PromptCreateView, views.PromptCreateView.reply, "generate/prompt"),
)
direct.add(
    "GET",
    "/generate/prompt/",
    direct.Route(
        views.PromptStatusView,
        views.PromptStatusView.reply,
        "generate/prompt/<str:prompt_id>",
        parse=views.prompt_uuid,
    ),
)
# A pop that asks to wait may be held: Django's way (koboldcluster.holding).
direct.add(
    "POST",
    "/generate/pop",
    direct.Route(views.PopView, views.PopView.reply, "generate/pop", takes=does_not_wait),
)
direct.add(
    "POST",
    "/generate/submit",
    direct.Route(views.SubmitView, views.SubmitView.reply, "generate/submit"),
)
direct.add(
    "POST",
    "/generate/progress",
    direct.Route(
        views_progress.ProgressView, views_progress.ProgressView.reply, "generate/progress"
    ),
)
