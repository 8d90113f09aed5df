"""The waiting paths get Django's security, common and frame middleware too (issue 23, 8).

They run a chain of their own (koboldcluster.asgi.WAITING_MIDDLEWARE): without these,
ALLOWED_HOSTS, HSTS and `nosniff` did not apply there.
"""

from __future__ import annotations

import pytest

from koboldcluster.asgi import WAITING_PATHS
from koboldcluster.tests.test_direct import _through_the_app

pytestmark = pytest.mark.django_db(transaction=True)

BAD_BODY = b'{"prompt": 5}'  # refused at once, on every waiting path


@pytest.mark.parametrize("path", sorted(WAITING_PATHS))
def test_a_host_outside_allowed_hosts_is_refused(path):
    response = _through_the_app("POST", path, BAD_BODY, {"host": "evil.example"})
    assert response.status_code == 400


@pytest.mark.parametrize("path", sorted(WAITING_PATHS))
def test_the_security_headers_are_sent(path, settings):
    settings.SECURE_HSTS_SECONDS = 3600
    response = _through_the_app("POST", path, BAD_BODY, {})
    assert response.status_code == 400, response.content
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "referrer-policy" in response.headers
    assert int(response.headers["content-length"]) == len(response.content)
