"""What researchers and students see in a browser: hub login, catalog page, JupyterLab.

Headless Chromium against a real hub (see conftest). The tests run in file order, as a person
would: the login page, a refused code, a good login, the catalog, then JupyterLab. Each page is
saved as a PNG (``$ENCLAVE_SCREENSHOTS`` or the tmp dir) for a person to look at.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import GRANTED, NOT_GRANTED, RESEARCHER, STUDENT

pytestmark = [pytest.mark.root, pytest.mark.browser, pytest.mark.timeout(300)]

LOGIN_ERROR = "Invalid username, password or authenticator code."


def wait_for(driver: Any, css: str, timeout: float = 30) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, css)),
        f"{css} did not appear at {driver.current_url}",
    )


def wait_until(driver: Any, check: Any, message: str, timeout: float = 30) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # JupyterLab re-renders its listings while loading: an element read mid-render goes stale.
    return WebDriverWait(
        driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda d: check(d), message)


def shoot(driver: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def fill_login(
    driver: Any, url: str, name: str, password: str, code: str, *, next_path: str = "/hub/home"
) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/hub/login?next={next_path}")
    wait_for(driver, "#login_submit")
    for field, value in (
        ("username_input", name),
        ("password_input", password),
        ("2fa_input", code),
    ):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "login_submit").click()


def log_in(driver: Any, enclave: Any, name: str, next_path: str = "/hub/home") -> None:
    login = enclave.logins[name]
    fill_login(driver, enclave.hub.url, name, login.password, login.code(), next_path=next_path)
    wait_until(
        driver,
        lambda d: "/hub/login" not in d.current_url,
        f"{name} was not let in: {driver.current_url}",
    )


def fetch_status(driver: Any, path: str) -> int:
    """The HTTP status the page's own ``fetch`` gets for ``path``: the browser's cookies and
    the XSRF header JupyterLab itself sends, so only the server's own rules decide."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';"
        "fetch(arguments[0], {credentials: 'same-origin', redirect: 'manual',"
        "                     headers: {'X-XSRFToken': decodeURIComponent(xsrf)}})"
        "  .then(r => done(r.status), e => done(-1));",
        path,
    )


# ------------------------------------------------------------------------------ hub login


def test_login_page_asks_for_an_authenticator_code_and_offers_no_sign_up(
    enclave, browser_for, screenshots
):
    from selenium.webdriver.common.by import By

    driver = browser_for(RESEARCHER)
    driver.get(f"{enclave.hub.url}/hub/login")
    wait_for(driver, "#login_submit")
    labels = [label.text for label in driver.find_elements(By.CSS_SELECTOR, "#login-main label")]
    assert labels == ["Username:", "Password:", "Authenticator code:"]
    code = driver.find_element(By.ID, "2fa_input")
    assert code.get_attribute("required") == "true" and code.get_attribute("pattern") == "[0-9]{6}"
    links = driver.find_elements(By.TAG_NAME, "a")
    assert not [
        a
        for a in links
        if "sign up" in a.text.lower()
        or (a.get_attribute("href") or "").rstrip("/").endswith("/signup")
    ]
    shoot(driver, screenshots, "01-login")
    password, eye = driver.find_element(By.ID, "password_input"), driver.find_element(By.ID, "eye")
    eye.click()
    assert password.get_attribute("type") == "text" and eye.text == "hide"
    eye.click()
    assert password.get_attribute("type") == "password" and eye.text == "show"


def test_a_wrong_authenticator_code_is_refused_with_the_reason_shown(
    enclave, browser_for, screenshots
):
    from selenium.webdriver.common.by import By

    driver = browser_for(RESEARCHER)
    login = enclave.logins[RESEARCHER]
    fill_login(driver, enclave.hub.url, RESEARCHER, login.password, login.wrong_code())
    error = wait_for(driver, ".login_error")
    assert error.text.strip() == LOGIN_ERROR
    assert "/hub/login" in driver.current_url
    # The name stays filled in so the person only retypes the secret parts.
    assert driver.find_element(By.ID, "username_input").get_attribute("value") == RESEARCHER
    assert driver.find_element(By.ID, "password_input").get_attribute("value") == ""
    shoot(driver, screenshots, "02-login-error")
    assert fetch_status(driver, "/hub/api/user") == 403  # no session was given


def test_password_and_a_fresh_code_log_the_researcher_in(enclave, browser_for, screenshots):
    from selenium.webdriver.common.by import By

    driver = browser_for(RESEARCHER)
    log_in(driver, enclave, RESEARCHER)
    wait_until(
        driver,
        lambda d: d.current_url.rstrip("/").endswith("/hub/home"),
        f"not sent home: {driver.current_url}",
    )
    assert RESEARCHER in driver.find_element(By.CSS_SELECTOR, "body").text
    assert driver.find_element(By.ID, "start").is_displayed()
    shoot(driver, screenshots, "03-hub-home")


# ------------------------------------------------------------------------------ catalog page


def catalog_cards(driver: Any) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    return {
        card.find_element(By.CSS_SELECTOR, "h2 code").text: card
        for card in driver.find_elements(By.CSS_SELECTOR, "section.card")
    }


def test_catalog_page_shows_the_granted_dataset_and_only_that(enclave, browser_for, screenshots):
    from selenium.webdriver.common.by import By

    driver = browser_for(RESEARCHER)
    driver.get(f"{enclave.hub.url}/services/catalog/")
    wait_until(
        driver,
        lambda d: (
            "/services/catalog/" in d.current_url
            and "oauth" not in d.current_url
            and d.find_elements(By.CSS_SELECTOR, "main")
        ),
        f"catalog page did not open: {driver.current_url}",
    )
    header = driver.find_element(By.CSS_SELECTOR, "header .who").text
    assert RESEARCHER in header and "researcher" in header
    cards = catalog_cards(driver)
    assert list(cards) == [GRANTED]
    assert NOT_GRANTED not in driver.page_source
    card = cards[GRANTED]
    manifest, summary = enclave.manifest, enclave.granted
    assert card.find_element(By.CSS_SELECTOR, "h2").text.startswith(manifest["title"])
    assert card.find_element(By.CSS_SELECTOR, ".desc").text == manifest["description"]
    chips = [c.text for c in card.find_elements(By.CSS_SELECTOR, ".chips span")]
    assert "CT" in chips and "CHEST" in chips and f"licence: {manifest['license']}" in chips
    header_cells = [th.text for th in card.find_elements(By.CSS_SELECTOR, "table th")]
    rows = card.find_elements(By.CSS_SELECTOR, "table tr")[1:]
    assert len(rows) == 1
    cells = [td.text for td in rows[0].find_elements(By.TAG_NAME, "td")]
    row = dict(zip(header_cells, cells, strict=True))
    (version,) = summary.versions
    assert row["version"] == f"v{enclave.granted_version}"
    assert row["status"] == "published"
    assert (row["studies"], row["series"]) == ("1", "1")
    assert row["files"] == str(version.file_count) and version.file_count >= 8
    assert row["validation"] == "passed, 0 error(s), 0 warning(s)"
    assert version.content_hash.startswith(row["content hash"])
    shoot(driver, screenshots, "04-catalog-researcher")


def test_catalog_search_stays_on_the_catalog_page(enclave, browser_for):
    from selenium.webdriver.common.by import By

    driver = browser_for(RESEARCHER)
    driver.get(f"{enclave.hub.url}/services/catalog/")
    box = wait_for(driver, "form.search input[name=q]")
    box.send_keys("lesion")
    driver.find_element(By.CSS_SELECTOR, "form.search button").click()
    wait_until(driver, lambda d: "q=lesion" in d.current_url, "search was not sent")
    assert "/services/catalog/" in driver.current_url
    assert list(catalog_cards(driver)) == [GRANTED]
    box = wait_for(driver, "form.search input[name=q]")
    box.clear()
    box.send_keys("no-such-word-anywhere")
    driver.find_element(By.CSS_SELECTOR, "form.search button").click()
    empty = wait_for(driver, "p.empty")
    assert "No dataset matches this search." in empty.text


def test_a_student_sees_no_researcher_dataset(enclave, browser_for, screenshots):
    from selenium.webdriver.common.by import By

    driver = browser_for(STUDENT)
    log_in(driver, enclave, STUDENT, next_path="/services/catalog/")
    wait_until(
        driver,
        lambda d: (
            "/services/catalog/" in d.current_url
            and "oauth" not in d.current_url
            and d.find_elements(By.CSS_SELECTOR, "main")
        ),
        f"catalog page did not open: {driver.current_url}",
    )
    assert "student" in driver.find_element(By.CSS_SELECTOR, "header .who").text
    assert catalog_cards(driver) == {}
    assert (
        "No dataset has been granted to you" in driver.find_element(By.CSS_SELECTOR, "p.empty").text
    )
    assert GRANTED not in driver.page_source and NOT_GRANTED not in driver.page_source
    shoot(driver, screenshots, "05-catalog-student")


# ------------------------------------------------------------------------------ JupyterLab


def lab_items(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        e.text
        for e in driver.find_elements(
            By.CSS_SELECTOR, ".jp-DirListing-item .jp-DirListing-itemText"
        )
    ]


def open_lab_at(driver: Any, url: str, wanted: str, timeout: float = 90) -> None:
    driver.get(url)
    wait_until(driver, lambda d: wanted in lab_items(d), f"{wanted} not listed at {url}", timeout)


def test_the_spawn_page_offers_a_desktop_or_a_notebook_and_a_researcher_gets_a_desktop(
    enclave, browser_for, screenshots
):
    from selenium.webdriver.common.by import By

    driver = browser_for(RESEARCHER)
    driver.get(f"{enclave.hub.url}/hub/home")
    wait_for(driver, "#start").click()  # "Start My Server", as a person does
    wait_for(driver, "input[name=kind]")
    choices = {
        e.get_attribute("value"): e.is_selected()
        for e in driver.find_elements(By.CSS_SELECTOR, "input[name=kind]")
    }
    assert choices == {"desktop": True, "notebook": False}
    text = driver.find_element(By.CSS_SELECTOR, "fieldset").text
    assert "Only its image reaches your browser" in text and "marked for notebooks" in text
    shoot(driver, screenshots, "06-spawn-choice")


def test_jupyterlab_opens_with_the_datasets_folder(enclave, browser_for, screenshots):
    from selenium.webdriver.common.by import By

    driver = browser_for(RESEARCHER)
    driver.get(f"{enclave.hub.url}/hub/spawn")
    wait_for(driver, "input[name=kind][value=notebook]").click()  # this time, a notebook
    driver.find_element(By.CSS_SELECTOR, "#spawn_form [type=submit]").click()
    wait_until(
        driver,
        lambda d: f"/user/{RESEARCHER}/lab" in d.current_url,
        f"lab did not open: {driver.current_url}",
        timeout=120,
    )
    wait_until(driver, lambda d: "datasets" in lab_items(d), "no datasets folder", timeout=60)
    wait_until(driver, lambda d: not d.find_elements(By.ID, "jupyterlab-splash"), "splash stays")
    time.sleep(1)  # let the launcher finish painting before the picture
    shoot(driver, screenshots, "07-jupyterlab")


def menu_labels(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    wait_for(driver, ".lm-Menu", timeout=10)
    items = driver.find_elements(By.CSS_SELECTOR, ".lm-Menu .lm-Menu-itemLabel")
    return [e.text for e in items if e.is_displayed() and e.text]  # hidden items are collapsed


def test_jupyterlab_offers_no_download_command(enclave, browser_for, screenshots):
    """Checked where a person would look: the file's context menu and the File menu.

    ``window.jupyterapp`` is only exposed in a dev/galata build, so the menus are the robust
    check; each has a positive control (an item that must be there) so a menu that failed to
    render cannot pass.
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser_for(RESEARCHER)
    folder = f"datasets/{GRANTED}/{enclave.granted_version}/tables"
    open_lab_at(driver, f"{enclave.hub.url}/user/{RESEARCHER}/lab/tree/{folder}", "clinical.csv")
    item = next(
        e
        for e in driver.find_elements(By.CSS_SELECTOR, ".jp-DirListing-item")
        if e.find_element(By.CSS_SELECTOR, ".jp-DirListing-itemText").text == "clinical.csv"
    )
    ActionChains(driver).context_click(item).perform()
    labels = menu_labels(driver)
    assert "Rename" in labels and "Copy Path" in labels, labels
    assert "Download" not in labels, labels
    assert "Open in New Browser Tab" not in labels, labels
    shoot(driver, screenshots, "08-jupyterlab-file-menu")
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()

    file_menu = next(
        e
        for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
        if e.text == "File"
    )
    file_menu.click()
    labels = menu_labels(driver)
    assert any(label.startswith("Save") for label in labels), labels
    assert not [label for label in labels if label.startswith("Download")], labels
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()

    exposed = driver.execute_script(
        "const app = window.jupyterapp;"
        "return app ? [app.commands.hasCommand('docmanager:download'),"
        "              app.commands.hasCommand('filebrowser:download')] : null;"
    )
    if exposed is not None:
        assert exposed == [False, False]


def test_the_files_url_of_a_dataset_file_is_refused_in_the_browser(
    enclave, browser_for, screenshots
):
    from selenium.webdriver.common.by import By

    driver = browser_for(RESEARCHER)
    path = f"datasets/{GRANTED}/{enclave.granted_version}/tables/clinical.csv"
    base = f"/user/{RESEARCHER}"
    open_lab_at(driver, f"{enclave.hub.url}{base}/lab/tree/datasets", GRANTED)
    # Same browser, same cookies: the contents API describes the file but does not send it,
    # and /files/ refuses it.
    assert fetch_status(driver, f"{base}/api/contents/{path}?content=0") == 200
    assert fetch_status(driver, f"{base}/api/contents/{path}") == 403
    assert fetch_status(driver, f"{base}/files/{path}") == 403
    assert fetch_status(driver, f"{base}/files/{path}?download=1") == 403
    driver.get(f"{enclave.hub.url}{base}/files/{path}")
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "403" in body and "subject_id" not in body
    shoot(driver, screenshots, "09-files-403")


# ------------------------------------------------------------------------------ desktop


def stop_server(enclave: Any, name: str) -> None:
    enclave.hub.stop(name)


def canvas_spread(driver: Any) -> float:
    """How varied the noVNC canvas's pixels are (0 for a blank canvas)."""
    return driver.execute_script(
        "const c = document.querySelector('#screen canvas');"
        "if (!c || !c.width || !c.height) return 0;"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0, s = 0, s2 = 0;"
        "for (let i = 0; i < d.length; i += 4 * 97) { const v = d[i] + d[i+1] + d[i+2];"
        "  n++; s += v; s2 += v * v; }"
        "return n ? Math.sqrt(s2 / n - (s / n) ** 2) : 0;"
    )


def open_desktop(driver: Any, enclave: Any, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{enclave.hub.url}/hub/spawn")
    desktop = wait_for(driver, "input[name=kind][value=desktop]")
    assert desktop.is_selected()  # a researcher's default
    driver.find_element(By.CSS_SELECTOR, "#spawn_form [type=submit]").click()
    wait_until(
        driver,
        lambda d: (
            d.current_url.rstrip("/").endswith(f"/user/{name}")
            and d.find_elements(By.CSS_SELECTOR, "#screen canvas")
        ),
        f"the desktop did not open: {driver.current_url}",
        timeout=120,
    )
    wait_until(driver, lambda d: canvas_spread(d) > 5, "the desktop stays blank", timeout=60)


def test_a_desktop_shows_jupyterlab_inside_as_pixels_and_answers_the_keyboard(
    enclave, browser_for, screenshots
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from ..workspace.test_desktops import inside

    stop_server(enclave, RESEARCHER)
    driver = browser_for(RESEARCHER)
    open_desktop(driver, enclave, RESEARCHER)
    status = driver.find_element(By.ID, "status")
    wait_until(driver, lambda d: "connected" in status.get_attribute("class"), "not connected")
    time.sleep(8)  # JupyterLab inside the desktop takes a few seconds to draw
    shoot(driver, screenshots, "10-desktop-jupyterlab")
    # The browser's own address bar has no lab, files or contents: only this page.
    assert driver.current_url.rstrip("/").endswith(f"/user/{RESEARCHER}")
    for path in ("lab", "api/contents", "files/datasets"):
        assert fetch_status(driver, f"/user/{RESEARCHER}/{path}") == 403, path

    # Typed in the browser, run on the desktop: a terminal opened inside takes a command
    # whose slashes, tilde and dashes must survive the keyboard mapping.
    home = inside(enclave.hub, RESEARCHER, "sh", "-c", "echo $HOME").stdout.strip()
    marker = Path(home) / "outputs" / "typed-in-the-browser"
    marker.unlink(missing_ok=True)
    inside(enclave.hub, RESEARCHER, "xfce4-terminal", "--maximize", background=True)
    time.sleep(3)
    canvas = driver.find_element(By.CSS_SELECTOR, "#screen canvas")
    ActionChains(driver).click(canvas).perform()
    ActionChains(driver).send_keys("touch ~/outputs/typed-in-the-browser\n").perform()
    wait_until(driver, lambda d: marker.exists(), "the typed command never ran", timeout=20)
    shoot(driver, screenshots, "11-desktop-terminal")
    ActionChains(driver).send_keys("exit\n").perform()

    # A dropped connection comes back by itself, to the same running desktop.
    driver.execute_script(
        "window.enclaveDesktop.before = true; window.enclaveDesktop._sock._websocket.close()"
    )
    wait_until(
        driver,
        lambda d: d.execute_script(
            "const rfb = window.enclaveDesktop;"
            "return !rfb.before && rfb._rfbConnectionState === 'connected'"
        ),
        "the desktop did not reconnect",
        timeout=30,
    )
    wait_until(driver, lambda d: canvas_spread(d) > 5, "blank after reconnecting")


def test_what_the_browser_receives_in_a_desktop_holds_no_byte_of_an_open_dataset_file(
    enclave, browser_for, screenshots
):
    """The issue's check: every HTTP response and websocket frame the browser gets while a
    dataset file is open on the desktop, searched for the file's bytes and their base64."""
    import base64
    import json

    from ..workspace.test_desktops import inside

    version = Path(f"datasets/{GRANTED}/{enclave.granted_version}")
    home = Path(inside(enclave.hub, RESEARCHER, "sh", "-c", "echo $HOME").stdout.strip())
    shown = version / "dataset.yaml"  # open on the desktop, as text
    others = [version / "tables" / "clinical.csv", next((home / version).rglob("*.dcm"))]
    contents = [(home / path).read_bytes() for path in (shown, *others)]
    assert all(len(c) > 40 for c in contents)
    # The text files, shown on the desktop in a terminal.
    shown_paths = " ".join(str(home / p) for p in (shown, others[0]))
    inside(enclave.hub, RESEARCHER, "xfce4-terminal", "--maximize", "--hold",
           "-x", "sh", "-c", f"cat {shown_paths}", background=True)  # fmt: skip
    driver = browser_for(RESEARCHER, record_network=True)
    log_in(driver, enclave, RESEARCHER, next_path=f"/user/{RESEARCHER}/")
    wait_until(driver, lambda d: canvas_spread(d) > 5, "the desktop stays blank", timeout=60)
    time.sleep(6)  # the file is drawn and the frames are sent while we watch
    shoot(driver, screenshots, "12-desktop-dataset-open")

    received: list[bytes] = []
    for entry in driver.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] == "Network.webSocketFrameReceived":
            frame = event["params"]["response"]
            data = frame["payloadData"]
            received.append(base64.b64decode(data) if frame["opcode"] == 2 else data.encode())
        elif event["method"] == "Network.responseReceived":
            try:
                body = driver.execute_cdp_cmd(
                    "Network.getResponseBody", {"requestId": event["params"]["requestId"]}
                )
            except Exception:  # a body the browser no longer keeps (redirects, 304s)
                continue
            text = body["body"]
            received.append(base64.b64decode(text) if body["base64Encoded"] else text.encode())
    frames = b"".join(received)
    assert len(frames) > 10_000  # the desktop's pixels did arrive
    for content in contents:
        needles = [content[i : i + 24] for i in range(0, len(content) - 24, 53)]
        needles += [base64.b64encode(content[s:])[8:32] for s in range(3)]
        # Runs of one byte (a DICOM preamble's zeros) are in any image; the rest is the file.
        needles = [n for n in needles if len(set(n)) >= 8]
        assert needles
        for needle in needles:
            assert needle not in frames, needle
