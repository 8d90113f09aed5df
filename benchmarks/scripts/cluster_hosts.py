"""The reference deployment (deploy/) on test hosts made of network namespaces, for
benchmarks/scripts/bench_cluster.py: PostgreSQL and Redis of their own, the scheduler, the web nodes
and HAProxy with deploy/'s configuration, and what each of them has spent so far."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "scripts"))
from bench_node import LOAD_ENV, PYTHON, WAITERS  # noqa: E402
from netns import Hosts  # noqa: E402

from benchmarks import cluster_bench, procstat  # noqa: E402

LB, DB, REDIS = "10.77.0.10", "10.77.0.20", "10.77.0.21"
WEB = {f"web{i}": f"10.77.0.{10 + i}" for i in (1, 2, 3)}
URL = f"https://{LB}"
TRANSACTIONS = (
    "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
)


def deployed_web_workers() -> int:
    """WEB_WORKERS as the reference deployment sets it (deploy/web.env)."""
    for line in (ROOT / "deploy" / "web.env").read_text().splitlines():
        if line.startswith("WEB_WORKERS="):
            return int(line.split("=", 1)[1].split("#")[0])
    return 2  # scripts/web.sh's default


class Cluster:
    """One deployment on the test hosts; `start(nodes)`, `measure`, `stop`."""

    def __init__(self, hosts: Hosts, folder: Path, web_workers: int = 0) -> None:
        self.hosts, self.folder = hosts, folder
        self.web_workers = web_workers or deployed_web_workers()
        self.web: dict[str, subprocess.Popen] = {}
        self.others: dict[str, subprocess.Popen] = {}
        self.database = ""

    # -- the shared parts ------------------------------------------------------------------
    def start_services(self) -> None:
        data = self.folder / "pg"
        self.folder.chmod(0o755)  # PostgreSQL runs as its own user
        data.mkdir()
        os.chown(data, _uid("postgres"), -1)
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "initdb",
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write("host all all 10.77.0.0/24 trust\n")
        self.others["postgres"] = self.hosts.popen(
            "db",
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "postgres",
                "-D",
                str(data),
                "-k",
                str(data),
                "-c",
                f"listen_addresses={DB}",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "fsync=on",
            ],
            stdout=self._log("postgres"),
            stderr=subprocess.STDOUT,
        )
        self.others["redis"] = self.hosts.popen(
            "redis",
            [
                "redis-server",
                "--bind",
                REDIS,
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=self._log("redis"),
            stderr=subprocess.STDOUT,
        )
        until(lambda: self.psql("postgres", "SELECT 1") == "1", "PostgreSQL")
        until(lambda: self.redis("PING") == "PONG", "Redis")

    def psql(self, database: str, query: str) -> str:
        return self.hosts.run(
            "db", "psql", "-h", DB, "-U", "postgres", "-d", database, "-tAc", query, check=False
        ).strip()

    def redis(self, *command: str) -> str:
        return self.hosts.run("redis", "redis-cli", "-h", REDIS, *command, check=False).strip()

    def env(self, database: str, node: str) -> dict[str, str]:
        """deploy/cluster.env and web.env, with the test hosts' addresses."""
        var = self.folder / node
        var.mkdir(exist_ok=True)
        return {
            **os.environ,
            **LOAD_ENV,
            "DATABASE_URL": f"postgres://postgres@{DB}:5432/{database}",
            "REDIS_URL": f"redis://{REDIS}:6379/0",
            "SECRET_KEY": "bench-cluster-secret-key-the-same-on-every-node",
            "ALLOWED_HOSTS": "*",
            "KOBOLDCLUSTER_TRUSTED_PROXIES": LB,
            "HOST": "0.0.0.0",
            "PORT": "5001",
            "WEB_WORKERS": str(self.web_workers),
            "KOBOLDCLUSTER_VAR_DIR": str(var),
            "PROMETHEUS_MULTIPROC_DIR": str(var / "prometheus"),
            "PYTHONUNBUFFERED": "1",
        }

    # -- one deployment --------------------------------------------------------------------
    def start(self, nodes: int) -> None:
        self.database = f"kcb_{nodes}_{int(time.time())}"
        self.psql("postgres", f"CREATE DATABASE {self.database}")
        self.redis("FLUSHALL")
        env = self.env(self.database, "sched")
        for command in (["migrate", "--noinput", "-v", "0"], ["ensure_schedules"]):
            done = self.hosts.popen(
                "sched",
                [PYTHON, "manage.py", *command],
                cwd=ROOT,
                env=env,
                stdout=self._log("sched"),
                stderr=subprocess.STDOUT,
            )
            if done.wait() != 0:
                raise RuntimeError(f"manage.py {command[0]} failed; see {self.folder}/sched.log")
        self.others["sched"] = self.hosts.popen(
            "sched",
            [PYTHON, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdout=self._log("sched"),
            stderr=subprocess.STDOUT,
        )
        for name in list(WEB)[:nodes]:
            self.web[name] = self.hosts.popen(
                name,
                ["scripts/web.sh"],
                cwd=ROOT,
                env=self.env(self.database, name),
                stdout=self._log(name),
                stderr=subprocess.STDOUT,
            )
        for name in self.web:
            until(lambda name=name: self.get(name, "/readyz").startswith("{"), f"{name} ready")
        self.others["haproxy"] = self._start_balancer()
        until(lambda: self.get("cli", "/healthz", URL).startswith("{"), "the balancer")

    def _start_balancer(self) -> subprocess.Popen:
        pem = self.folder / "cluster.pem"
        if not pem.exists():
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=cluster.test",
                    "-keyout",
                    str(pem),
                    "-out",
                    str(self.folder / "cert.pem"),
                ],
                check=True,
                capture_output=True,
            )
            pem.write_text((self.folder / "cert.pem").read_text() + pem.read_text())
        balancer = cluster_bench.Balancer(
            nodes=tuple((name, f"{WEB[name]}:5001") for name in self.web),
            certificate=str(pem),
            state_dir=str(self.folder),
            maxconn=_haproxy_maxconn(),
        )
        config = self.folder / "haproxy.cfg"
        template = cluster_bench.DEPLOY_HAPROXY.read_text()
        config.write_text(cluster_bench.render_haproxy(template, balancer))
        self.hosts.run("lb", "haproxy", "-c", "-q", "-f", str(config))
        return self.hosts.popen(
            "lb",
            ["haproxy", "-W", "-db", "-f", str(config)],
            stdout=self._log("haproxy"),
            stderr=subprocess.STDOUT,
        )

    def get(self, host: str, path: str, base: str | None = None) -> str:
        url = f"{base or f'http://{WEB[host]}:5001'}{path}"
        where = "lb" if base else host
        return self.hosts.run(where, "curl", "-sk", "--max-time", "10", url, check=False)

    def waiters(self) -> float:
        """Pops waiting now on every live web node (each node's /metrics adds its processes)."""
        return sum(self.waiters_per_node().values())

    def waiters_per_node(self) -> dict[str, float]:
        return {
            name: sum(map(float, WAITERS.findall(self.get(name, "/metrics"))))
            for name, process in self.web.items()
            if process.poll() is None
        }

    def balancer_view(self) -> dict[str, str]:
        """What HAProxy says of each web node (its stats page, on the balancer's loopback)."""
        csv = self.hosts.run("lb", "curl", "-s", "--max-time", "5", "http://127.0.0.1:8404/;csv",
                             check=False)  # fmt: skip
        return cluster_bench.haproxy_status(csv)

    def stop(self) -> None:
        for process in [
            *self.web.values(),
            self.others.pop("haproxy", None),
            self.others.pop("sched", None),
        ]:
            if process is not None:
                self.hosts.stop(process)
        self.web = {}

    # -- readings --------------------------------------------------------------------------
    def reading(self) -> dict[str, Any]:
        parts = {
            name: procstat.group_usage(process.pid).cpu
            for name, process in self.web.items()
            if process.poll() is None
        }
        for name in ("postgres", "redis", "haproxy"):
            parts[name] = procstat.usage(procstat.tree_pids(self.others[name].pid)).cpu
        if self.hosts.wire is not None:  # the delay between the hosts, where netem is missing
            parts["wire"] = procstat.usage([self.hosts.wire.pid]).cpu
        return {
            "cpu": parts,
            "redis": cluster_bench.commandstats_calls(self.redis("INFO", "commandstats")),
            "wal": self.psql(self.database, "SELECT pg_current_wal_lsn()"),
            "transactions": int(self.psql(self.database, TRANSACTIONS) or 0),
            "at": time.monotonic(),
        }

    def _log(self, name: str) -> Any:
        return open(self.folder / f"{name}.log", "a")  # noqa: SIM115 - closed with the process


def _haproxy_maxconn() -> int:
    """The most connections HAProxy can hold within this machine's hard limit of open files
    (two each, and some to spare)."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return min(100000, (hard - 200) // 2)


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def until(condition: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)
