"""`ml-playground serve` as a user runs it: a subprocess on a real loopback port.

The tiny experiment is prepared and trained (4 iterations) in-process once; the server is then
started with `python -m ml_playground serve tiny.toml --port 0` and found through the URL it
prints. The browser test drives the playground page in headless Chromium (Selenium with the
system's chromedriver) and is skipped, with the reason, where either is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cli_runner import cli_env
from conftest import TINY_EXPERIMENT, write_corpus
from ml_playground.config.loading import resolve_config
from ml_playground.data.prepare import prepare_dataset
from ml_playground.train.loop import train

API_KEY = "e2e-key"


@dataclass(frozen=True)
class Server:
    root: Path
    workdir: Path
    url: str
    log: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    corpus = write_corpus(root / "corpus.txt")
    toml = root / "tiny.toml"
    toml.write_text(TINY_EXPERIMENT.format(corpus=corpus.as_posix()), encoding="utf-8")
    workdir = root / "work"
    cfg = resolve_config(str(toml), ["train.max_iters=4", "train.eval_interval=2"])
    prepare_dataset(cfg.data, workdir, cfg.name)
    train(cfg, workdir)

    log = root / "serve.log"
    command = [sys.executable, "-m", "ml_playground", "serve", "tiny.toml", "--port", "0"]
    command += ["--workdir", str(workdir), "--api-key", API_KEY]
    with log.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            command, cwd=root, env=cli_env(), stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        url = wait_until_up(process, log)
        yield Server(root, workdir, url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_up(process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> str:
    """The URL the server printed, once /health answers."""
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode}:\n{log.read_text('utf-8')}")
        if url is None:
            for line in log.read_text("utf-8").splitlines():
                if line.startswith("serving ") and " on http://" in line:
                    url = line.split(" on ", 1)[1].split("/ ", 1)[0]
        if url is not None:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    pytest.fail(f"serve did not come up in {timeout} s:\n{log.read_text('utf-8')}")


def test_health_names_the_trained_checkpoint(server: Server) -> None:
    info = httpx.get(f"{server.url}/health").json()
    assert info["model"] == "tiny"
    assert info["checkpoint"] == str(
        server.workdir / "runs" / "tiny" / "main" / "checkpoints" / "best"
    )
    assert info["auth"] is True
    assert server.url.startswith("http://127.0.0.1:")  # loopback unless asked otherwise


def test_stream_a_completion_over_http(server: Server) -> None:
    body = {"model": "tiny", "prompt": "KING.", "max_tokens": 40, "stream": True, "seed": 1}
    events: list[str] = []
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=body, headers=server.auth, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in events[:-1]]
    assert len(chunks) > 10  # streamed token by token
    assert {chunk["model"] for chunk in chunks} == {"tiny"}
    text = "".join(choice["text"] for chunk in chunks for choice in chunk["choices"])
    assert len(text) == 40
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    plain = httpx.post(
        f"{server.url}/v1/completions", json={**body, "stream": False}, headers=server.auth
    ).json()
    assert plain["choices"][0]["text"] == text  # same seed, same text
    assert plain["usage"] == {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}


def test_auth_and_bad_requests_over_http(server: Server) -> None:
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    models = httpx.get(f"{server.url}/v1/models", headers=server.auth).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    bad = httpx.post(
        f"{server.url}/v1/completions", json={"prompt": "KING.", "max_tokens": 10**6},
        headers=server.auth,
    )  # fmt: skip
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "max_tokens"


def test_a_taken_port_is_a_user_error(server: Server) -> None:
    port = server.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "ml_playground", "serve", "tiny.toml", "--port", port,
         "--workdir", str(server.workdir)],
        cwd=server.root, env=cli_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def browser_or_skip() -> tuple[str, str]:
    """Paths of Chromium and its chromedriver, or skip saying what is missing."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("headless Chromium needs `apt-get install chromium chromium-driver`")
    return chromium, driver


@pytest.mark.browser
def test_the_playground_page_streams_text_in_chromium(server: Server) -> None:
    chromium, driver_path = browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(f"{server.url}/")
        wait.until(lambda b: "checkpoint" in b.find_element(By.ID, "info").text)
        info = browser.find_element(By.ID, "info").text
        assert "model tiny" in info
        assert "best" in info
        assert browser.find_element(By.ID, "api-key").is_displayed()  # the server wants a key

        browser.find_element(By.ID, "api-key").send_keys(API_KEY)
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("QUEEN.")
        tokens = browser.find_element(By.ID, "max-tokens")
        tokens.clear()
        tokens.send_keys("60")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: b.execute_script("return document.body.dataset.done") == "true")

        completion = browser.find_element(By.ID, "completion").text
        status = browser.find_element(By.ID, "status").text
        assert len(completion.replace("\n", "")) > 20, (completion, status)
        assert status.startswith("answered by tiny (best@"), status
        assert "60 tokens" in status
    finally:
        browser.quit()
