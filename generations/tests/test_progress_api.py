"""POST /generate/progress and /api/v2/generate/text/progress: a job's text so far.

Only the owner of the server holding a processing job may post; the text is kept outside the
database and dropped when the job ends.
"""

import uuid

import pytest

from conftest import SERVER_PASSWORD
from generations.models import Job
from generations.progress_store import progress_text

pytestmark = pytest.mark.django_db
V2 = "/api/v2/generate/text/progress"


@pytest.fixture(autouse=True)
def own_folder(own_transient_dir):
    """Progress files of this test's own."""


@pytest.fixture
def job_id(submit_prompt, pop):
    submit_prompt(params={"n": 1, "max_length": 16}, username="alice")
    return pop().json()["id"]


@pytest.fixture
def post_progress(api):
    def post(job_id, text="Once", **body):
        body = {"id": job_id, "password": SERVER_PASSWORD, "text": text, **body}
        return api.post("/generate/progress", body, format="json")

    return post


def prompt_of(job_id):
    return Job.objects.get(id=job_id).prompt_id


def test_the_owner_posts_the_text_so_far_and_only_the_latest_is_kept(post_progress, job_id):
    assert post_progress(job_id, "Once").status_code == 200
    response = post_progress(job_id, "Once upon")

    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert progress_text(prompt_of(job_id)) == (job_id, "Once upon")
    job = Job.objects.get(id=job_id)
    assert (job.state, job.text) == (Job.State.PROCESSING, "")


def test_the_text_so_far_is_kept_exactly_line_breaks_and_all(post_progress, job_id):
    # A model writes carriage returns too: a stream that showed "\n" for one would not add
    # up to the stored generation (it failed the real backends' abort test).
    text = "one\rtwo\r\nthree\nfour\x85five\u2028six\r"

    assert post_progress(job_id, text).status_code == 200
    assert progress_text(prompt_of(job_id)) == (job_id, text)


def test_the_submit_drops_the_progress_and_later_progress_is_refused(
    post_progress, submit_generation, job_id
):
    post_progress(job_id, "Once upon")
    submit_generation(job_id, "Once upon a time")

    assert progress_text(prompt_of(job_id)) is None
    response = post_progress(job_id, "Once upon a time, more")
    assert response.status_code == 404
    assert response.json()["rc"] == "AbortedGen"
    assert progress_text(prompt_of(job_id)) is None


def test_a_late_progress_post_never_shows_the_submitted_text_twice(
    post_progress, submit_generation, job_id, monkeypatch
):
    """A bridge's progress thread may post once more after its submit: nothing is stored
    (it stored the generation followed by its own text for a moment, which a stream sent)."""
    from generations import progress as progress_module

    stored = []
    real_store = progress_module.progress_store

    def spy(**kwargs):
        stored.append(kwargs["text"])
        real_store(**kwargs)

    monkeypatch.setattr(progress_module, "progress_store", spy)
    submit_generation(job_id, "Once upon a time")

    assert post_progress(job_id, "Once upon").status_code == 404
    assert stored == []
    assert progress_text(prompt_of(job_id)) is None


def test_a_cancelled_requests_job_is_told_to_stop_and_its_text_so_far_is_paid(
    api, post_progress, submit_generation, job_id
):
    post_progress(job_id, "Once upon")
    assert api.delete(f"/generate/prompt/{prompt_of(job_id)}").status_code == 200

    response = post_progress(job_id, "Once upon a")
    assert response.status_code == 404
    assert response.json()["rc"] == "AbortedGen"
    # The bridge stops its backend and submits what it has: accepted, as any result.
    assert submit_generation(job_id, "Once upon a").json() == {"reward": 3}
    assert Job.objects.get(id=job_id).state == Job.State.DONE


def test_a_fault_drops_the_progress(post_progress, submit_generation, job_id):
    post_progress(job_id, "Once upon")
    submit_generation(job_id, "", state="faulted")

    assert progress_text(prompt_of(job_id)) is None
    assert post_progress(job_id).json()["rc"] == "AbortedGen"


def test_an_unknown_job_is_404(post_progress, bob):
    response = post_progress(str(uuid.uuid4()))

    assert response.status_code == 404
    assert response.json()["rc"] == "InvalidJobID"


def test_a_wrong_password_is_401_and_keeps_nothing(post_progress, job_id):
    response = post_progress(job_id, password="not-bobs")

    assert response.status_code == 401
    assert progress_text(prompt_of(job_id)) is None


def test_another_accounts_key_is_403_on_v2(api, register, job_id):
    _, key = register("mallory")

    response = api.post(V2, {"id": job_id, "text": "x"}, format="json", HTTP_APIKEY=key)

    assert response.status_code == 403
    assert progress_text(prompt_of(job_id)) is None


def test_v2_needs_an_api_key(api, job_id):
    response = api.post(V2, {"id": job_id, "text": "x"}, format="json")

    assert response.status_code in (401, 403)
    assert "rc" in response.json()


def test_v2_owner_posts_and_unknown_job_is_404(api, register):
    _, key = register("dave")
    _, carol_key = register("carol")
    headers = {"HTTP_APIKEY": key}
    api.post(
        "/api/v2/generate/text/async",
        {"prompt": "Hi", "params": {"max_length": 16}},
        format="json",
        HTTP_APIKEY=carol_key,
    )
    popped = api.post(
        "/api/v2/generate/text/pop",
        {"name": "dave-1", "models": ["tiny-llm"]},
        format="json",
        **headers,
    ).json()
    job_id = popped["ids"][0]

    assert api.post(V2, {"id": job_id, "text": "Hel"}, format="json", **headers).status_code == 200
    assert progress_text(prompt_of(job_id)) == (job_id, "Hel")
    unknown = api.post(V2, {"id": str(uuid.uuid4()), "text": "x"}, format="json", **headers)
    assert (unknown.status_code, unknown.json()["rc"]) == (404, "InvalidJobID")


def test_a_null_text_is_400(post_progress, job_id):
    response = post_progress(job_id, text=None)

    assert response.status_code == 400


def test_reaping_a_job_drops_its_progress(post_progress, job_id):
    from datetime import timedelta

    from django.utils import timezone

    from generations.lifecycle import jobs_reap

    post_progress(job_id, "Once upon")
    Job.objects.filter(id=job_id).update(deadline=timezone.now() - timedelta(seconds=1))

    assert jobs_reap() == 1
    assert progress_text(prompt_of(job_id)) is None


def test_stale_progress_files_are_swept(settings, own_transient_dir):
    import os
    import time

    from generations import progress_store

    settings.REDIS_URL = ""
    prompt_id = uuid.uuid4()
    progress_store.progress_store(prompt_id=prompt_id, job_id="j", text="old")
    path = own_transient_dir / "progress" / str(prompt_id)
    old = time.time() - progress_store.PROGRESS_TTL_SECONDS - 1
    os.utime(path, (old, old))

    assert progress_store.progress_sweep() == 1
    assert progress_store.progress_text(prompt_id) is None


def test_progress_survives_its_directory_being_removed(settings, own_transient_dir):
    from generations import progress_store

    settings.REDIS_URL = ""
    prompt_id = uuid.uuid4()
    progress_store.progress_store(prompt_id=prompt_id, job_id="j", text="before")
    progress_store.progress_drop(prompt_id)
    (own_transient_dir / "progress").rmdir()  # e.g. a cleanup of the var dir

    progress_store.progress_store(prompt_id=prompt_id, job_id="j", text="after")

    assert progress_store.progress_text(prompt_id) == ("j", "after")


class TestDeltas:
    """What a stream sends of each text so far: pieces that add up to the final answer."""

    def pieces(self, texts, final, **options):
        from generations.streaming import Deltas

        deltas = Deltas(**options)
        sent = [deltas.delta(text) for text in texts]
        return sent, deltas.delta(final, final=True)

    def test_only_the_new_part_of_each_text(self):
        sent, last = self.pieces(["Once", "Once upon", "Once upon a"], "Once upon a time")
        assert sent == ["Once", " upon", " a"] and last == " time"

    def test_a_stop_sequence_is_never_sent_even_in_part(self):
        sent, last = self.pieces(
            ["Hi there\nUs", "Hi there\nUser: x"], "Hi there\nUser: x", stops=["\nUser:"]
        )
        assert "".join(sent) + last == "Hi there"
        assert "\n" not in "".join(sent)

    def test_a_chat_message_is_stripped_as_the_answer_is(self):
        sent, last = self.pieces(["  Hello ", "  Hello world  "], "  Hello world.  ", strip=True)
        assert "".join(sent) + last == "Hello world."

    def test_a_restart_that_may_still_catch_up_sends_nothing_meanwhile(self):
        sent, last = self.pieces(["Once upon", "Once", "Once up"], "Once upon a time")
        assert sent == ["Once upon", "", ""] and last == " a time"

    @pytest.mark.parametrize(
        ("texts", "final"),
        [
            (["Once upon", "Another"], "Another story"),  # another server's progress
            (["Once upon"], "Another story"),  # its final text
            (["Once upon"], "Once"),  # a final text shorter than what was sent
        ],
    )
    def test_a_text_that_does_not_continue_what_was_sent_fails_the_stream(self, texts, final):
        from generations.streaming import Deltas, ServerReplaced

        deltas = Deltas()
        with pytest.raises(ServerReplaced):
            for text in texts:
                deltas.delta(text)
            deltas.delta(final, final=True)
        assert deltas.sent == "Once upon"
