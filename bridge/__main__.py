"""`python -m bridge`: read the settings, find the backend, serve jobs until Ctrl-C.

Exit codes: 0 after a normal stop, 1 when the backend or the cluster refuses to work with us,
2 for a bad setting, 130 when a second Ctrl-C cut the graceful stop short.
"""

from __future__ import annotations

import sys

# Checked before anything else is imported: the config reader needs tomllib (3.11), and a
# contributor with an old Python should get this sentence rather than an ImportError.
if sys.version_info < (3, 11):  # noqa: UP036 (runs on the contributor's Python)
    sys.exit("bridge: error: the bridge needs Python 3.11 or newer")

import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from types import FrameType  # noqa: E402

from bridge import BRIDGE_AGENT, __version__  # noqa: E402
from bridge.cluster import PROTOCOLS  # noqa: E402
from bridge.config import Config, ConfigError, load_config  # noqa: E402
from bridge.contracts import Settings  # noqa: E402
from bridge.detect import detect  # noqa: E402
from bridge.kobold import KoboldError  # noqa: E402
from bridge.retry import Backoff  # noqa: E402
from bridge.threads import Bridge  # noqa: E402
from bridge.worker import log, summary_log  # noqa: E402

EXIT_FATAL = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # the shell convention for "ended by SIGINT"


def configure_logging(config: Config) -> None:
    """One line per event on stderr; thread names only when there are several workers."""
    thread = "[%(threadName)s] " if config.threads > 1 else ""
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)-7s {thread}%(message)s", datefmt="%Y-%m-%d %H:%M:%S"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    level = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}
    logging.getLogger("bridge").setLevel(level[config.verbosity])
    summary_log.setLevel(logging.INFO)
    if config.verbosity == "verbose":
        # urllib3 logs one line per HTTP request: what -v promises. Never bodies, so no prompts.
        logging.getLogger("urllib3").setLevel(logging.DEBUG)


def settings_from(config: Config) -> Settings:
    return Settings(
        interval=config.interval,
        threads=config.threads,
        max_length=config.max_length,
        max_context_length=config.max_context_length,
        model_name=config.model_name,
        pause_when_busy=config.pause_when_busy,
        refresh_interval=config.refresh_interval,
        summary_interval=config.summary_interval,
        log_prompts=config.log_prompts,
        backoff=Backoff(config.backoff_base, config.backoff_max),
        busy_backoff=Backoff(config.backoff_base, min(config.backoff_max, 4.0)),
    )


def install_signal_handlers(bridge: Bridge) -> None:
    """First Ctrl-C: stop popping, finish the jobs in progress. Second: quit now.

    SIGTERM (a service manager stopping the bridge, which will not wait for long): stop
    popping and hand every unfinished job back at once with its text so far, which the
    cluster has another server continue (bridge/handback.py), then leave."""
    presses = 0

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal presses
        if signum == getattr(signal, "SIGTERM", None) and not bridge.hand_back.is_set():
            bridge.stop.set()
            bridge.hand_back.set()  # the main thread hands them back (not in a handler)
            log.warning("stopping: handing the jobs in progress back to the cluster")
            return
        presses += 1
        if presses == 1:
            bridge.stop.set()
            jobs = bridge.stats.in_flight
            if jobs:
                what = "the job" if jobs == 1 else f"the {jobs} jobs"
                log.warning("stopping: finishing %s in progress (Ctrl-C again to quit now)", what)
            else:
                log.warning("stopping")
            return
        summary_log.warning("quit at once: %s", bridge.stats.summary())
        # The workers may be blocked in a KoboldAI request for minutes; don't wait for them.
        # The cluster gives their jobs to other servers when the jobs' ttl passes.
        os._exit(EXIT_INTERRUPTED)

    # Windows never delivers SIGTERM to a console program (registering it is allowed but
    # useless); there, Ctrl-Break and closing the console window arrive as SIGBREAK.
    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            signal.signal(signum, handle)
        except (OSError, ValueError):
            continue


def _hint_threads(slots: int | None, threads: int) -> None:
    """llama.cpp serves `--parallel` requests at once: one bridge thread per slot uses them."""
    if slots is None or slots == threads:
        return
    if threads < slots:
        log.info("the backend has %d slots; --threads %d would use them all", slots, slots)
    else:
        log.info("the backend has %d slots; threads beyond that wait for a free one", slots)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as error:
        print(f"bridge: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config)

    cluster = PROTOCOLS[config.protocol].from_config(config, bridge_agent=BRIDGE_AGENT)
    if config.config_file:
        log.debug("settings read from %s", config.config_file)
    log.info(
        "bridge %s: serving the cluster at %s%s as %r with %d thread%s",
        __version__,
        config.cluster_url,
        " (AI Horde v2 protocol)" if config.protocol == "horde" else "",
        config.name,
        config.threads,
        "" if config.threads == 1 else "s",
    )
    try:
        # Fail fast at start: the backend is on this PC, so a mistake here is the
        # contributor's to fix now. Later outages are waited out instead.
        found = detect(
            config.backend_url,
            protocol=config.backend,  # type: ignore[arg-type]
            apikey=config.backend_apikey,
            generate_timeout=config.kai_timeout,
        )
        log.info("found %s", found.description)
        bridge = Bridge(cluster=cluster, kobold=found.backend, settings=settings_from(config))
        bridge.watcher.capabilities()
        _hint_threads(found.backend.parallel, config.threads)
    except KoboldError as error:
        log.error("%s", error)
        return EXIT_FATAL
    log.info("ready; Ctrl-C to stop")
    install_signal_handlers(bridge)
    bridge.start()
    bridge.join()
    if bridge.fatal is None:
        bridge.leave()
    stats = bridge.stats
    # A bridge refused at its first pop has nothing to sum up: the error is the whole story.
    if bridge.fatal is None or stats.done or stats.given_back or stats.dropped:
        summary_log.info("stopped: %s", stats.summary())
    if bridge.fatal is not None:
        log.error("%s", bridge.fatal)
        return EXIT_FATAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
