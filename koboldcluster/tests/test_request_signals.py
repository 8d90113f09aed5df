"""The direct lane's request_started and request_finished (koboldcluster.request_signals) do
what sending the signals does: Django's receivers' work, and every other receiver called."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.core import signals
from django.db import connection

from koboldcluster import request_signals

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def djangos_receivers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both signals with Django's receivers only, in Django's order (as in a server process;
    the test client disconnects and reconnects close_old_connections around its requests)."""
    for signal, receivers in request_signals.DJANGOS_RECEIVERS.items():
        monkeypatch.setattr(signal, "receivers", [])
        for receiver in receivers:
            signal.connect(receiver)
    monkeypatch.setattr(request_signals, "_seen", {})


def test_with_djangos_receivers_only_their_work_is_done(djangos_receivers_only):
    connection.ensure_connection()
    assert all(
        request_signals._receivers(s) == r for s, r in request_signals.DJANGOS_RECEIVERS.items()
    )
    connection.queries_log.append({"sql": "SELECT 1", "time": "0.000"})
    connection.close_at = time.monotonic() - 1  # past CONN_MAX_AGE: closed at the start
    request_signals.request_started(sender=__name__, scope={})
    assert not connection.queries_log
    assert connection.connection is None
    connection.ensure_connection()
    connection.close_at = time.monotonic() - 1  # and at the end
    request_signals.request_finished(sender=__name__)
    assert connection.connection is None


def test_another_receiver_is_called_as_send_calls_it(djangos_receivers_only):
    calls: list[tuple[str, dict[str, Any]]] = []

    def started(**kwargs: Any) -> None:
        calls.append(("started", kwargs))

    def finished(**kwargs: Any) -> None:
        calls.append(("finished", kwargs))

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    try:
        request_signals.request_started(sender="lane", scope={"type": "http"})
        request_signals.request_finished(sender="lane")
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)
    assert calls == [
        (
            "started",
            {"signal": signals.request_started, "sender": "lane", "scope": {"type": "http"}},
        ),
        ("finished", {"signal": signals.request_finished, "sender": "lane"}),
    ]
    assert (
        request_signals._receivers(signals.request_finished)
        == (request_signals.DJANGOS_RECEIVERS[signals.request_finished])
    )


def test_in_another_order_they_are_called_in_that_order(djangos_receivers_only):
    finished = signals.request_finished
    first = request_signals.DJANGOS_RECEIVERS[finished][0]
    finished.disconnect(first)
    finished.connect(first)  # as the test client leaves them
    djangos = request_signals.DJANGOS_RECEIVERS[finished]
    assert request_signals._receivers(finished) == [*djangos[1:], first]


def test_a_receiver_for_one_sender_an_async_or_a_dead_one_is_left_to_send(djangos_receivers_only):
    started = signals.request_started

    def for_one(**kwargs: Any) -> None:
        pass

    async def waits(**kwargs: Any) -> None:
        pass

    for receiver, options in ((for_one, {"sender": "other"}), (waits, {})):
        started.connect(receiver, **options)
        assert request_signals._receivers(started) is None
        started.disconnect(receiver, **options)
        assert request_signals._receivers(started) == request_signals.DJANGOS_RECEIVERS[started]
    started._dead_receivers = True
    assert request_signals._receivers(started) is None
    started._dead_receivers = False
