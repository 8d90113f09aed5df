"""`manage.py createapikey <username> [--name NAME]`: a new API key, printed once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.keys import apikey_issue_for_username
from koboldcluster.errors import ApiError


class Command(BaseCommand):
    help = (
        "Issue a new API key for USERNAME, registering the account if it does not exist, and "
        "print the key. It is shown only this once: the cluster keeps only its digest."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label for the key, e.g. 'my server'")

    def handle(self, *args: Any, username: str, name: str, **options: Any) -> None:
        try:
            UnicodeUsernameValidator()(username)
        except ValidationError as error:
            raise CommandError(f"{username!r}: {' '.join(error.messages)}") from None
        if len(username) > 150:
            raise CommandError(f"{username!r}: at most 150 characters.")
        try:
            user, key, created = apikey_issue_for_username(username=username, name=name[:100])
        except ApiError as error:
            raise CommandError(error.message) from None
        if created:
            self.stderr.write(f"Registered the account {user.horde_name}.")
        # The key alone on stdout, so that `KEY=$(manage.py createapikey bob)` works.
        self.stderr.write(f"A new API key for {user.horde_name} (shown only this once):")
        self.stdout.write(key)
