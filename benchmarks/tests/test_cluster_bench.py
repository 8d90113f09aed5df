"""The logic of the benchmarks across processes and hosts (benchmarks/scripts/bench_cluster.py,
benchmarks/scripts/load.py, benchmarks/procstat.py), and deploy/'s HAProxy configuration as HAProxy
itself reads it. No timing is asserted: the benchmarks measure, these check the arithmetic."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import cluster_bench, procstat

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load_script():
    spec = importlib.util.spec_from_file_location("load_script", SCRIPTS / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("load_script", module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def _balancer(tmp_path: Path, nodes=(("web1", "10.77.0.11:5001"), ("web2", "10.77.0.12:5001"))):
    return cluster_bench.Balancer(
        nodes=tuple(nodes), certificate=str(tmp_path / "c.pem"), state_dir=str(tmp_path)
    )


def test_the_balancer_gets_the_benchmarks_nodes_and_nothing_else_changes(tmp_path):
    template = cluster_bench.DEPLOY_HAPROXY.read_text()
    rendered = cluster_bench.render_haproxy(template, _balancer(tmp_path, [("n1", "1.2.3.4:5")]))
    servers = [line.strip() for line in rendered.splitlines() if line.strip().startswith("server ")]
    assert servers == ["server n1 1.2.3.4:5"]
    assert f"ssl crt {tmp_path}/c.pem" in rendered
    assert f"stats socket {tmp_path}/admin.sock" in rendered
    assert "maxconn 100000" in rendered  # deploy/'s own, unless asked otherwise
    lower = cluster_bench.Balancer(nodes=(("n", "1:2"),), certificate="c", state_dir="s", maxconn=9)
    assert "maxconn 100000" not in cluster_bench.render_haproxy(template, lower)
    assert "    maxconn 9  #" in cluster_bench.render_haproxy(template, lower)
    # Every other line as written: the time-outs the README promises among them.
    kept = [
        line for line in template.splitlines() if "server " not in line and "ssl crt" not in line
    ]
    kept = [line for line in kept if "stats socket" not in line]
    assert all(line in rendered.splitlines() for line in kept)
    assert "timeout server 320s" in rendered


def test_a_template_without_the_nodes_block_is_refused(tmp_path):
    with pytest.raises(ValueError):
        cluster_bench.render_haproxy("backend web\n    server a 1.2.3.4:5\n", _balancer(tmp_path))
    with pytest.raises(ValueError):  # opened, never closed
        cluster_bench.render_haproxy("    # web nodes\n    server a 1:2\n", _balancer(tmp_path))


def test_the_balancer_outwaits_every_wait_of_the_cluster():
    """HAProxy's server and client time-outs exceed the longest pop wait, the front-end APIs'
    wait for a generation and the streams' keep-alive, or the balancer cuts answers off."""
    from django.conf import settings

    limits = settings.KOBOLDCLUSTER
    text = cluster_bench.DEPLOY_HAPROXY.read_text()
    longest = max(
        limits["POP_WAIT_MAX_SECONDS"],
        limits["FRONTEND_WAIT_SECONDS"],
        limits["STREAM_KEEPALIVE_SECONDS"],
    )
    for name in ("client", "server"):
        line = next(x for x in text.splitlines() if x.strip().startswith(f"timeout {name} "))
        assert int(line.split()[-1].rstrip("s")) > longest


def test_haproxy_accepts_the_deployments_configuration(tmp_path):
    # Fails rather than skips without it: ./test.sh installs Debian's haproxy.
    assert shutil.which("haproxy"), "haproxy is not installed (./test.sh installs it)"
    pem = tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=test", "-keyout", str(pem), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    pem.write_text((tmp_path / "cert.pem").read_text() + pem.read_text())
    config = tmp_path / "haproxy.cfg"
    template = cluster_bench.DEPLOY_HAPROXY.read_text()
    balancer = _balancer(tmp_path)
    balancer = cluster_bench.Balancer(**{**balancer.__dict__, "maxconn": 1000})  # any machine
    config.write_text(cluster_bench.render_haproxy(template, balancer))
    checked = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = tmp_path / "broken.cfg"
    broken.write_text(config.read_text().replace("balance leastconn", "balance nonsense"))
    refused = subprocess.run(["haproxy", "-c", "-f", str(broken)], capture_output=True)
    assert refused.returncode != 0


def test_redis_commands_between_two_readings():
    before = cluster_bench.commandstats_calls(
        "# Commandstats\r\ncmdstat_get:calls=10,usec=5,usec_per_call=0.5\r\n"
        "cmdstat_publish:calls=3,usec=9,usec_per_call=3.0\r\n"
    )
    after = cluster_bench.commandstats_calls(
        "cmdstat_get:calls=25,usec=9\ncmdstat_publish:calls=3,usec=9\ncmdstat_incrby:calls=4\n"
    )
    assert before == {"get": 10, "publish": 3}
    assert cluster_bench.calls_between(before, after) == {"get": 15, "incrby": 4}
    assert cluster_bench.merge_counts([{"a": 1}, {"a": 2, "b": 1}]) == {"a": 3, "b": 1}


def test_wal_bytes_between_two_positions():
    assert cluster_bench.wal_bytes("0/16B3740", "0/16B3800") == 0xC0
    assert cluster_bench.wal_bytes("0/FFFFFFF0", "1/10") == 0x20  # across a log file's id


def test_what_breaks_first_is_a_part_at_a_whole_core():
    assert cluster_bench.first_saturated({"web1": 0.5, "postgres": 0.95}) == "postgres"
    assert cluster_bench.first_saturated({"web1": 0.5, "postgres": 0.4}) is None
    assert cluster_bench.first_saturated({}) is None
    assert cluster_bench.per_generation(3.0, 0) is None
    assert cluster_bench.per_generation(3.0, 6) == 0.5


def test_load_describes_latencies_in_milliseconds():
    load = _load_script()
    described = load.describe([0.001 * n for n in range(1, 101)])
    assert described == {"count": 100, "mean": 50.5, "p50": 51.0, "p99": 99.0, "max": 100.0}
    assert load.describe([]) == {"count": 0}


def test_load_counts_a_prompt_served_twice_as_a_duplicate():
    load = _load_script()
    results = load.Results()
    results.jobs.update(["a", "b", "b"])
    results.sent += ["a", "b", "c"]
    summary = results.summary()
    assert summary["duplicate_jobs"] == 1
    assert summary["prompts_served"] == 2
    assert summary["prompts_sent"] == 3


def test_proc_stat_fields_survive_a_command_name_with_spaces_and_parentheses():
    line = "1234 (web (worker) 1) S 1 1234 1234 0 -1 4194560 " + " ".join(["7"] * 40)
    fields = procstat.parse_stat(line)
    assert fields[0] == "S"
    assert fields[2] == "1234"  # the process group


def test_this_process_is_read_from_proc():
    if sys.platform != "linux":
        pytest.skip("/proc is Linux's")
    mine = procstat.usage([os.getpid()])
    assert mine.processes == 1
    assert mine.threads >= 1
    assert mine.files >= 3  # stdin, stdout, stderr at least
    assert mine.resident > 0
    assert os.getpid() in procstat.tree_pids(os.getppid())
    assert os.getpid() in procstat.group_pids(os.getpgid(0))
    assert procstat.percentile([3, 1, 2], 0.5) == 2
    assert procstat.percentile([], 0.99) == 0.0


def test_haproxy_says_which_web_nodes_are_down():
    csv = (
        "# pxname,svname,qcur,status,weight\n"
        "cluster,FRONTEND,,OPEN,\n"
        "web,web1,0,UP,1\n"
        "web,web2,0,DOWN,1\n"
        "web,BACKEND,0,UP,2\n"
    )
    assert cluster_bench.haproxy_status(csv) == {"web1": "UP", "web2": "DOWN"}
    assert cluster_bench.haproxy_status("") == {}
