"""The rows the cluster cannot run without: the anonymous user (id 0) and the fold watermark."""

from django.contrib.auth.hashers import make_password
from django.db import migrations


def create_rows(apps, schema_editor):
    User = apps.get_model("accounts", "User")
    LedgerFold = apps.get_model("accounts", "LedgerFold")
    # id 0 is what AI Horde clients expect of "Anonymous#0".
    User.objects.get_or_create(
        pk=0,
        defaults={"username": "Anonymous", "kind": "anonymous", "password": make_password(None)},
    )
    LedgerFold.objects.get_or_create(pk=1)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [migrations.RunPython(create_rows, migrations.RunPython.noop)]
