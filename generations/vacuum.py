"""After a large purge on PostgreSQL, VACUUM the tables that held the purged text.

PostgreSQL does not overwrite a deleted row: it stays in the table's file as a dead tuple
until VACUUM makes its space reusable (autovacuum does so too, but only once a table's dead
rows pass its thresholds). A plain VACUUM takes no lock that blocks reads or writes, frees the
dead rows' space for new rows, and cuts off empty pages at the end of a table, which after a
purge of most of the queue is most of the file. It does not zero the bytes of dead rows on
pages that keep live rows: README "Privacy" says what remains and how to go further.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection

from generations.models import Job, Prompt, PromptModel, PromptWorker

logger = logging.getLogger(__name__)

# Every table that holds a prompt's text, parameters or model names, or a generation.
TABLES = (Prompt, Job, PromptModel, PromptWorker)


def vacuum_after_purge(purged_prompts: int) -> bool:
    """VACUUM the prompt and job tables if at least PURGE_VACUUM_PROMPTS were purged.

    Only on PostgreSQL, and only outside a transaction (VACUUM cannot run in one); returns
    whether it ran.
    """
    threshold = settings.KOBOLDCLUSTER["PURGE_VACUUM_PROMPTS"]
    if (
        connection.vendor != "postgresql"
        or not threshold
        or purged_prompts < threshold
        or connection.in_atomic_block
    ):
        return False
    tables = ", ".join(connection.ops.quote_name(model._meta.db_table) for model in TABLES)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM {tables}")
    logger.info("purge: vacuumed the prompt and job tables after %s prompts", purged_prompts)
    return True
