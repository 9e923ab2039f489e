"""The dashboard in a real browser: headless Chromium, driven by Selenium, on the real server under gunicorn.

The admin sets everything up through `tadbot admin`, a device says one real turn with a face photo, and two
therapists use the pages as a person would: logging in, reading a session, downloading its PDF, being kept out
of another's client, and erasing one. The tests run in file order and share one server and one browser.

Debian's chromium and chromium-driver are used as installed (`make test` installs them); Selenium Manager is
told to stay offline, so nothing is ever downloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pypdf import PdfReader
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import LiveServer, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
for _binary, _package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
    if not _binary.is_file():
        pytest.skip(
            f"{_binary} is missing: install Debian's {_package} (apt-get install {_package})",
            allow_module_level=True,
        )

WAIT_S = 20
"""The longest any one page, element or download is waited for."""
CLIENT = "ana"
SAID = "My chest feels tight and I can't breathe on the bus"
PASSWORDS = {"dr-a": "correct horse battery staple", "dr-b": "a different long passphrase"}


@dataclass
class Setup:
    server: LiveServer
    device_token: str
    session_id: str
    reply: str


def _admin(server: LiveServer, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "server", "admin", *args],
        env=server.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"tadbot admin {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, tiny_fer: Path, face_jpeg: Path
) -> Iterator[Setup]:
    """A server of its own (the erasure must not disturb other modules), set up as the admin would, with one
    turn said by ana's device."""
    server = start_server(tmp_path_factory.mktemp("browser"), llm=tiny_gguf, fer=tiny_fer)
    try:
        device_token = _admin(server, "add-device", "pi-ana", "--client", CLIENT).strip().splitlines()[-1]
        _admin(server, "add-therapist", "dr-a", "--client", CLIENT)
        _admin(server, "add-therapist", "dr-b")
        for name, password in PASSWORDS.items():
            _admin(server, "password", name, stdin=password + "\n")

        headers = {"Authorization": f"Bearer {device_token}"}
        opened = requests.post(f"{server.url}/api/v1/sessions", headers=headers, json={}, timeout=30)
        assert opened.status_code == 201, opened.text
        session_id = opened.json()["session_id"]
        answer = requests.post(
            f"{server.url}/api/v1/sessions/{session_id}/turns",
            headers=headers,
            data={"text": SAID},
            files=[("frame", ("face.jpg", face_jpeg.read_bytes(), "image/jpeg"))],
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        events = [json.loads(line) for line in answer.text.splitlines() if line]
        assert events[-1]["type"] == "done", events
        assert any(e["type"] == "emotions" and e["faces"] == 1 for e in events), events
        reply = " ".join(str(e["text"]) for e in events if e["type"] == "sentence")
        assert reply.strip(), events
        yield Setup(server, device_token, session_id, reply)
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(downloads: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1024,1366"):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")
        browser = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        browser.set_page_load_timeout(WAIT_S)
        browser.implicitly_wait(2)
        browser.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        yield browser
    finally:
        browser.quit()


def _wait(driver: webdriver.Chrome) -> WebDriverWait[webdriver.Chrome]:
    return WebDriverWait(driver, WAIT_S)


def _log_in(driver: webdriver.Chrome, server: LiveServer, name: str, password: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{server.url}/dashboard/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    _wait(driver).until(lambda d: "Log in ·" not in d.title or d.find_elements(By.ID, "login-error"))


def _main_text(driver: webdriver.Chrome) -> str:
    return driver.find_element(By.ID, "main").text


def _client_link(driver: webdriver.Chrome) -> list[WebElement]:
    return driver.find_elements(By.LINK_TEXT, CLIENT)


def test_a_wrong_password_is_refused_and_sets_no_login_cookie(setup: Setup, driver: webdriver.Chrome) -> None:
    _log_in(driver, setup.server, "dr-a", "not the password")
    error = _wait(driver).until(ec.visibility_of_element_located((By.ID, "login-error")))
    assert "the name, password or code is not right" in error.text
    assert driver.get_cookie("tadbot_login") is None
    assert driver.find_element(By.ID, "name").get_attribute("value") == "dr-a"


def test_dr_a_reads_ana_s_session_with_its_chart(
    setup: Setup, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    _log_in(driver, setup.server, "dr-a", PASSWORDS["dr-a"])
    assert driver.get_cookie("tadbot_login") is not None
    _wait(driver).until(ec.title_contains("Your clients"))
    row = driver.find_element(By.XPATH, f"//tr[th/a[text()='{CLIENT}']]")
    assert "1 unread" in row.text

    row.find_element(By.LINK_TEXT, CLIENT).click()
    _wait(driver).until(ec.title_contains(CLIENT))
    assert driver.find_element(By.TAG_NAME, "h1").text == CLIENT
    driver.find_element(By.CSS_SELECTOR, f"a[href$='/dashboard/sessions/{setup.session_id}']").click()
    _wait(driver).until(ec.title_contains(f"Session of {CLIENT}"))

    said = driver.find_elements(By.CSS_SELECTOR, "ol.turns > li.turn.user p.words")
    replies = driver.find_elements(By.CSS_SELECTOR, "ol.turns > li.turn.assistant p.words")
    assert [p.text for p in said] == [SAID]
    assert len(replies) == 1
    assert replies[0].get_attribute("textContent") == setup.reply

    chart = driver.find_element(By.CSS_SELECTOR, "figure svg")
    assert chart.find_elements(By.CSS_SELECTOR, "path, polyline")
    assert chart.find_elements(By.CSS_SELECTOR, "title")
    assert chart.size["width"] > 300 and chart.size["height"] > 100, chart.size

    shot = tmp_path / "session.png"
    assert driver.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, len(png)

    # The first Tab from the top of the page lands on the skip link, which shows itself when focused.
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    focused = driver.switch_to.active_element
    assert focused.text == "Skip to content"
    assert (focused.get_attribute("href") or "").endswith("#main")

    # Opened once: the list no longer counts it unread.
    driver.get(f"{setup.server.url}/dashboard/")
    row = driver.find_element(By.XPATH, f"//tr[th/a[text()='{CLIENT}']]")
    assert "unread" not in row.text


def test_the_pdf_report_downloads_with_the_conversation(
    setup: Setup, driver: webdriver.Chrome, downloads: Path
) -> None:
    driver.get(f"{setup.server.url}/dashboard/sessions/{setup.session_id}")
    link = driver.find_element(By.LINK_TEXT, "PDF report")
    assert link.get_attribute("download") is not None
    link.click()
    pdf = downloads / f"tadbot-session-{setup.session_id}.pdf"
    _wait(driver).until(lambda _: pdf.is_file() and not list(downloads.glob("*.crdownload")))
    assert pdf.read_bytes().startswith(b"%PDF-")
    text = " ".join(page.extract_text() for page in PdfReader(pdf).pages)
    flat = " ".join(text.split())
    assert CLIENT in flat
    assert SAID in flat
    assert "Confidential" in flat


def test_dr_b_sees_neither_ana_nor_her_session(setup: Setup, driver: webdriver.Chrome) -> None:
    driver.get(f"{setup.server.url}/dashboard/")
    driver.find_element(By.XPATH, "//button[text()='Log out']").click()
    _wait(driver).until(ec.title_contains("Log in"))
    assert driver.get_cookie("tadbot_login") is None

    _log_in(driver, setup.server, "dr-b", PASSWORDS["dr-b"])
    _wait(driver).until(ec.title_contains("Your clients"))
    assert "dr-b" in driver.find_element(By.CSS_SELECTOR, "header .who").text
    driver.implicitly_wait(0)
    try:
        assert not _client_link(driver)
    finally:
        driver.implicitly_wait(2)
    assert "No clients are assigned to you yet" in _main_text(driver)

    for path in (
        f"sessions/{setup.session_id}",
        f"sessions/{setup.session_id}/export.pdf",
        f"clients/{CLIENT}",
    ):
        driver.get(f"{setup.server.url}/dashboard/{path}")
        _wait(driver).until(ec.title_contains("Not available"))
        page = driver.page_source
        assert SAID not in page and "breathe" not in page
        assert setup.reply not in page
    # The browser cannot show a status code; the same request made with dr-b's cookie shows it is a 404.
    cookie = driver.get_cookie("tadbot_login")
    assert cookie is not None
    answer = requests.get(
        f"{setup.server.url}/dashboard/sessions/{setup.session_id}",
        cookies={"tadbot_login": cookie["value"]},
        timeout=30,
        allow_redirects=False,
    )
    assert answer.status_code == 404 and "Not available" in answer.text and SAID not in answer.text


def test_dr_a_erases_ana_only_once_her_pseudonym_is_typed(setup: Setup, driver: webdriver.Chrome) -> None:
    server = setup.server
    _log_in(driver, server, "dr-a", PASSWORDS["dr-a"])
    _wait(driver).until(ec.title_contains("Your clients"))
    driver.get(f"{server.url}/dashboard/clients/{CLIENT}")
    driver.find_element(By.PARTIAL_LINK_TEXT, f"Erase {CLIENT}").click()
    _wait(driver).until(ec.title_contains(f"Erase {CLIENT}"))
    counts = _main_text(driver)
    # "1 session", "2 turns", "1 face reading": the prefix of each, whatever the plural says.
    assert "1 session" in counts and "2 turns" in counts and "1 face reading" in counts, counts

    driver.find_element(By.ID, "confirm").send_keys("anna")
    driver.find_element(By.XPATH, f"//button[text()='Erase {CLIENT}']").click()
    error = _wait(driver).until(ec.visibility_of_element_located((By.CSS_SELECTOR, "p.error[role=alert]")))
    assert "nothing was erased" in error.text
    driver.get(f"{server.url}/dashboard/sessions/{setup.session_id}")
    assert driver.find_elements(By.CSS_SELECTOR, "li.turn.user")

    driver.get(f"{server.url}/dashboard/clients/{CLIENT}/erase")
    driver.find_element(By.ID, "confirm").send_keys(CLIENT)
    driver.find_element(By.XPATH, f"//button[text()='Erase {CLIENT}']").click()
    notice = _wait(driver).until(ec.visibility_of_element_located((By.CSS_SELECTOR, "p.notice[role=status]")))
    assert notice.text.startswith(f"Erased {CLIENT}: 1 session"), notice.text
    driver.implicitly_wait(0)
    try:
        assert not _client_link(driver)
    finally:
        driver.implicitly_wait(2)
    driver.get(f"{server.url}/dashboard/sessions/{setup.session_id}")
    _wait(driver).until(ec.title_contains("Not available"))
    assert SAID not in driver.page_source

    audit = [line.split() for line in _admin(server, "audit", "--limit", "50").splitlines()]
    assert any(parts[2:4] == ["therapist:dr-a", "delete_client"] for parts in audit), audit

    refused = requests.post(
        f"{server.url}/api/v1/sessions",
        headers={"Authorization": f"Bearer {setup.device_token}"},
        json={},
        timeout=30,
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "not_enrolled"
