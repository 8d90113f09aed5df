"""The cluster's own rules (`settings.KOBOLDCLUSTER`), each from its environment variable
(README: "Configuration")."""

from __future__ import annotations

import os

from koboldcluster.env import VAR_DIR, env_bool, env_float, env_int, env_rate, parse_networks

KOBOLDCLUSTER = {
    # Seconds a prompt lives after its last activity (creation, status poll, pop, submit).
    "PROMPT_EXPIRY_SECONDS": env_int("KOBOLDCLUSTER_PROMPT_EXPIRY_SECONDS", 600, minimum=1),
    # The least time a server gets to deliver a job; longer for long requests on slow servers.
    "JOB_TTL_FLOOR_SECONDS": env_int("KOBOLDCLUSTER_JOB_TTL_FLOOR_SECONDS", 150, minimum=1),
    "JOB_TTL_MAX_SECONDS": env_int("KOBOLDCLUSTER_JOB_TTL_MAX_SECONDS", 1800, minimum=1),
    # A job whose server showed signs of life (progress, heartbeats) and then none for this
    # long is given back without waiting for its ttl (README "When a volunteer drops out").
    "STALL_SECONDS": env_int("KOBOLDCLUSTER_STALL_SECONDS", 15, minimum=1),
    # A server that has not checked in for this long is not listed and not counted.
    "SERVER_STALE_SECONDS": env_int("KOBOLDCLUSTER_SERVER_STALE_SECONDS", 300, minimum=1),
    # A pop writes the server's check-in time at most this often.
    "CHECK_IN_WRITE_SECONDS": env_int("KOBOLDCLUSTER_CHECK_IN_WRITE_SECONDS", 30),
    # How long a KoboldAI or OpenAI API request waits for its generation before it gives up
    # (and cancels its prompt).
    "FRONTEND_WAIT_SECONDS": env_float("KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS", 300.0),
    # How long such a request that no server online could serve waits for one to come, when
    # one may be reconnecting (generations/fitting.py); otherwise it is refused at once.
    "FRONTEND_GRACE_SECONDS": env_float("KOBOLDCLUSTER_FRONTEND_GRACE_SECONDS", 5.0),
    # A stream with nothing new to send sends a comment this often, so proxies keep it open.
    "STREAM_KEEPALIVE_SECONDS": env_float("KOBOLDCLUSTER_STREAM_KEEPALIVE_SECONDS", 10.0),
    "MAX_N": env_int("KOBOLDCLUSTER_MAX_N", 100, minimum=1),
    "MAX_LENGTH": env_int("KOBOLDCLUSTER_MAX_LENGTH", 4096, minimum=1),
    "MAX_CONTEXT_LENGTH": env_int("KOBOLDCLUSTER_MAX_CONTEXT_LENGTH", 1048576, minimum=1),
    "MAX_PROMPT_CHARS": env_int("KOBOLDCLUSTER_MAX_PROMPT_CHARS", 100_000, minimum=1),
    # The longest a pop may wait for work (`wait`, seconds; the API accepts 0–30).
    "POP_WAIT_MAX_SECONDS": min(env_int("KOBOLDCLUSTER_POP_WAIT_MAX_SECONDS", 30), 30),
    # Waiting requests re-check this often (seconds) whether they missed a wake-up.
    "WAKEUP_RECHECK_SECONDS": env_float("KOBOLDCLUSTER_WAKEUP_RECHECK_SECONDS", 3.0),
    # Failed or abandoned jobs after which a prompt is given up as faulted.
    "MAX_JOB_FAILURES": env_int("KOBOLDCLUSTER_MAX_JOB_FAILURES", 3, minimum=1),
    # A server slower than this (tokens per second, measured; 0 until its first job) does not
    # get requests that set the AI Horde's `slow_workers: false`.
    "SLOW_SERVER_TOKENS_PER_SECOND": env_float("KOBOLDCLUSTER_SLOW_SERVER_TOKENS_PER_SECOND", 3.0),
    # An idle pop's answer (nothing to serve, and why) is remembered this long per server
    # profile, or until this process hears that the queue changed: idle servers asking every
    # second cost next to nothing. 0 turns it off.
    "IDLE_POP_CACHE_SECONDS": env_float("KOBOLDCLUSTER_IDLE_POP_CACHE_SECONDS", 2.0),
    # The original API's create, pop, submit and status skip Django's request stack under
    # ASGI (koboldcluster/direct.py), with the same answers; off: every request takes it.
    "DIRECT_LANE": env_bool("KOBOLDCLUSTER_DIRECT_LANE", True),
    # How long a verified server password is remembered (as a keyed digest, never in clear).
    "PASSWORD_CACHE_SECONDS": env_int("KOBOLDCLUSTER_PASSWORD_CACHE_SECONDS", 300),
    # The ledger fold leaves the newest entries alone this long, so that a transaction that
    # committed late can never slip under the fold's watermark.
    "LEDGER_FOLD_LAG_SECONDS": env_int("KOBOLDCLUSTER_LEDGER_FOLD_LAG_SECONDS", 30),
    # How often the scheduled tasks run, in minutes (README: "Scheduled work"). django-q2
    # schedules in whole minutes and looks for due schedules every 30 seconds.
    "PURGE_EVERY_MINUTES": env_int("KOBOLDCLUSTER_PURGE_EVERY_MINUTES", 1, minimum=1),
    "REAPER_EVERY_MINUTES": env_int("KOBOLDCLUSTER_REAPER_EVERY_MINUTES", 1, minimum=1),
    "LEDGER_FOLD_EVERY_MINUTES": env_int("KOBOLDCLUSTER_LEDGER_FOLD_EVERY_MINUTES", 1, minimum=1),
    # Queue priority is the requester's balance (tokens contributed − used) within these
    # bounds, plus this many points per second of waiting. Anonymous and unclaimed names sit
    # at the floor. Worst case: a floor prompt overtakes a capped one that arrived at the same
    # time after (CAP − FLOOR) / AGEING seconds.
    "PRIORITY_FLOOR_TOKENS": env_int("KOBOLDCLUSTER_PRIORITY_FLOOR_TOKENS", -1000, None),
    "PRIORITY_CAP_TOKENS": env_int("KOBOLDCLUSTER_PRIORITY_CAP_TOKENS", 10000, None),
    "AGEING_TOKENS_PER_SECOND": env_float("KOBOLDCLUSTER_AGEING_TOKENS_PER_SECOND", 50.0),
    # The most waiting generation slots a user may have queued (a user's own `concurrency`
    # overrides it). The anonymous user is one account shared by every caller without a key.
    "CONCURRENCY": env_int("KOBOLDCLUSTER_CONCURRENCY", 30, minimum=1),
    "CONCURRENCY_TRUSTED": env_int("KOBOLDCLUSTER_CONCURRENCY_TRUSTED", 100, minimum=1),
    "CONCURRENCY_ANONYMOUS": env_int("KOBOLDCLUSTER_CONCURRENCY_ANONYMOUS", 500, minimum=1),
    # Callers without credentials (the anonymous key, or a username nobody has claimed) share
    # this many waiting generations per client address (IPv6: per /64), whatever names they
    # invent; and each of their requests asks for at most MAX_N_ANONYMOUS generations.
    "CONCURRENCY_PER_CLIENT": env_int("KOBOLDCLUSTER_CONCURRENCY_PER_CLIENT", 30, minimum=1),
    "MAX_N_ANONYMOUS": env_int("KOBOLDCLUSTER_MAX_N_ANONYMOUS", 10, minimum=1),
    # Reverse proxies whose X-Forwarded-For is believed (addresses or networks, comma-separated).
    "TRUSTED_PROXIES": parse_networks(os.environ.get("KOBOLDCLUSTER_TRUSTED_PROXIES", "")),
    # After a wrong password, neither that client nor that account gets another password
    # checked (a deliberately slow hash) for this long; a wrong password already refused is
    # remembered (as a keyed digest) for PASSWORD_CACHE_SECONDS and refused at no cost.
    "PASSWORD_LOCKOUT_SECONDS": env_int("KOBOLDCLUSTER_PASSWORD_LOCKOUT_SECONDS", 5, minimum=1),
    # After a purge that deleted at least this many prompts, PostgreSQL VACUUMs the prompt
    # and job tables (README "Privacy"); 0 never.
    "PURGE_VACUUM_PROMPTS": env_int("KOBOLDCLUSTER_PURGE_VACUUM_PROMPTS", 1000),
    # Rate limits per client address and per account, fixed windows counted where every
    # process sees them (koboldcluster/counters.py: this file without REDIS_URL, else Redis).
    # "off" turns them all off: load tests.
    # Where the web processes of one machine keep their wake-up sockets (default var/wakeups).
    "WAKEUP_SOCKET_DIR": os.environ.get("KOBOLDCLUSTER_WAKEUP_SOCKET_DIR", ""),
    # Where the web processes of one machine keep what they share without Redis: the progress
    # texts of streams and the signs of life of jobs (default the var dir).
    "TRANSIENT_DIR": os.environ.get("KOBOLDCLUSTER_TRANSIENT_DIR", ""),
    "COUNTERS_FILE": os.environ.get("KOBOLDCLUSTER_COUNTERS_FILE")
    or str(VAR_DIR / "counters.sqlite3"),
    "RATE_LIMITS_ENABLED": env_bool("KOBOLDCLUSTER_RATE_LIMITS", True),
    # Servers one account may have active at once (a new one beyond: 403), and pops one
    # account may have held waiting in one web process (beyond: answered at once).
    "MAX_SERVERS_PER_ACCOUNT": env_int("KOBOLDCLUSTER_MAX_SERVERS_PER_ACCOUNT", 50, minimum=1),
    "HELD_POPS_PER_ACCOUNT": env_int("KOBOLDCLUSTER_HELD_POPS_PER_ACCOUNT", 64, minimum=0),
    # --- Trust and quality (README "Trust and quality"; servers/records.py, suspicion.py) ---
    # A server's record weighs about its last this many jobs (counters that decay by
    # 1 − 1/window at each job); ratings and canaries have windows of their own.
    "RECORD_WINDOW_JOBS": env_int("KOBOLDCLUSTER_RECORD_WINDOW_JOBS", 100, minimum=2),
    "RECORD_WINDOW_RATINGS": env_int("KOBOLDCLUSTER_RECORD_WINDOW_RATINGS", 50, minimum=2),
    "RECORD_WINDOW_CANARIES": env_int("KOBOLDCLUSTER_RECORD_WINDOW_CANARIES", 10, minimum=2),
    # A result with fewer non-blank characters than this counts as empty.
    "NEAR_EMPTY_CHARS": env_int("KOBOLDCLUSTER_NEAR_EMPTY_CHARS", 3),
    # Speeds are judged only for jobs of at least this many tokens.
    "SPEED_MIN_TOKENS": env_int("KOBOLDCLUSTER_SPEED_MIN_TOKENS", 8, minimum=1),
    # No rule judges a server before its record holds this many jobs (ratings: this many
    # ratings; canaries: this many compared canaries).
    "SUSPICION_MIN_JOBS": env_int("KOBOLDCLUSTER_SUSPICION_MIN_JOBS", 20, minimum=1),
    "SUSPICION_MIN_RATINGS": env_int("KOBOLDCLUSTER_SUSPICION_MIN_RATINGS", 5, minimum=1),
    "SUSPICION_MIN_CANARIES": env_int("KOBOLDCLUSTER_SUSPICION_MIN_CANARIES", 3, minimum=1),
    # Shares of the record over which a server is paused (1 turns a rule off).
    "SUSPICION_TOO_FAST_SHARE": env_float("KOBOLDCLUSTER_SUSPICION_TOO_FAST_SHARE", 0.2),
    "SUSPICION_EMPTY_SHARE": env_float("KOBOLDCLUSTER_SUSPICION_EMPTY_SHARE", 0.5),
    "SUSPICION_REPEATED_SHARE": env_float("KOBOLDCLUSTER_SUSPICION_REPEATED_SHARE", 0.3),
    "SUSPICION_FAILED_SHARE": env_float("KOBOLDCLUSTER_SUSPICION_FAILED_SHARE", 0.5),
    "SUSPICION_BAD_RATINGS_SHARE": env_float("KOBOLDCLUSTER_SUSPICION_BAD_RATINGS_SHARE", 0.6),
    "SUSPICION_CANARY_SHARE": env_float("KOBOLDCLUSTER_SUSPICION_CANARY_SHARE", 0.6),
    # The speed rule on and how the caps scale (1.0: the table in README "Trust and quality").
    "SPEED_CAP_FACTOR": env_float("KOBOLDCLUSTER_SPEED_CAP_FACTOR", 1.0),
    # An account whose servers were paused this many times is flagged (and loses its trust).
    "FLAG_AFTER_PAUSES": env_int("KOBOLDCLUSTER_FLAG_AFTER_PAUSES", 3, minimum=1),
    # Servers an untrusted account may have active at once (a new one beyond: 403).
    "UNTRUSTED_SERVERS_PER_ACCOUNT": env_int(
        "KOBOLDCLUSTER_UNTRUSTED_SERVERS_PER_ACCOUNT", 20, minimum=1
    ),
    # An account is trusted once its servers delivered this many jobs, it is this many days
    # old, and none of its servers was paused for this many days.
    "TRUST_MIN_JOBS": env_int("KOBOLDCLUSTER_TRUST_MIN_JOBS", 500, minimum=1),
    "TRUST_MIN_DAYS": env_int("KOBOLDCLUSTER_TRUST_MIN_DAYS", 7),
    "TRUST_EVERY_MINUTES": env_int("KOBOLDCLUSTER_TRUST_EVERY_MINUTES", 10, minimum=1),
    # Canaries: one round per model served by at least CANARY_MIN_SERVERS servers, about
    # this often (minutes; 0: never). A round's answers are compared after CANARY_WAIT_SECONDS
    # or once every server answered.
    "CANARY_EVERY_MINUTES": env_int("KOBOLDCLUSTER_CANARY_EVERY_MINUTES", 60),
    "CANARY_MIN_SERVERS": env_int("KOBOLDCLUSTER_CANARY_MIN_SERVERS", 3, minimum=3),
    "CANARY_MAX_SERVERS": env_int("KOBOLDCLUSTER_CANARY_MAX_SERVERS", 9, minimum=3),
    "CANARY_WAIT_SECONDS": env_int("KOBOLDCLUSTER_CANARY_WAIT_SECONDS", 300, minimum=1),
    "CANARY_LENGTH": env_int("KOBOLDCLUSTER_CANARY_LENGTH", 16, minimum=1),
    # The answers are compared on their first this many words.
    "CANARY_COMPARE_WORDS": env_int("KOBOLDCLUSTER_CANARY_COMPARE_WORDS", 4, minimum=1),
    # A token that /metrics then asks for as `Authorization: Bearer <token>`; empty: open.
    "METRICS_TOKEN": os.environ.get("KOBOLDCLUSTER_METRICS_TOKEN", ""),
    "RATE_LIMITS": {
        f"{scope}_{per}": env_rate(f"KOBOLDCLUSTER_RATE_{scope.upper()}_{per.upper()}", default)
        for (scope, per), default in {
            ("submit", "ip"): "90/min",
            ("submit", "account"): "120/min",
            ("status", "ip"): "600/min",
            ("status", "account"): "600/min",
            ("worker", "ip"): "60/s",
            ("worker", "account"): "60/s",
            ("register", "ip"): "10/hour",
            ("register", "account"): "10/hour",
            # Accounts a server's first pop creates (or claims): each hashes a password.
            ("new_account", "ip"): "10/hour",
            # The AI Horde v2 read endpoints (workers, users, status/models, …).
            ("read", "ip"): "90/min",
            ("read", "account"): "off",
            # The front-end faces' information (models, versions, limits), the status page
            # and /metrics: what clients and dashboards poll, limited so none can flood.
            ("info", "ip"): "300/min",
            ("info", "account"): "off",
            ("transfer", "ip"): "60/min",
            ("transfer", "account"): "90/hour",
        }.items()
    },
}
