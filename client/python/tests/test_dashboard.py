"""The web dashboard in a real headless Chromium (Debian's chromium and chromium-driver,
driven by selenium): the login refuses a wrong token; studies, a study's job graph and
results, a running job whose state and loss curve change live, workers with the operator's
drain. Screenshots go to $RMGEN_SCREENSHOT_DIR (else the test's temporary folder)."""
import os
import shutil
import time
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException, StaleElementReferenceException, TimeoutException)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from conftest import LONG_STUDY  # noqa: E402

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = Path(os.environ.get("RMGEN_SCREENSHOT_DIR") or tmp_path_factory.mktemp("shots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM or not DRIVER:
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1000", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    b = webdriver.Chrome(service=Service(DRIVER), options=opts)
    b.set_page_load_timeout(30)
    yield b
    b.quit()


def wait(b, cond, timeout=30, what="the condition"):
    """Waits for cond(driver); the page re-renders as it polls, so an element found a moment
    ago may be gone: those lookups are tried again."""
    try:
        return WebDriverWait(b, timeout, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,
                                                 NoSuchElementException)).until(lambda d: cond(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; page: " +
                             b.find_element(By.TAG_NAME, "body").text[:2000])


def js(b, expr):
    """A value read in one step in the page (no element handle to go stale)."""
    return b.execute_script("return " + expr)


def click(b, selector):
    assert js(b, f"(() => {{ const e = document.querySelector({selector!r}); if (e) e.click(); return !!e; }})()"), selector


def login(b, base, token):
    b.get(base + "/healthz")  # the origin, without the page: its storage cleared in peace
    b.execute_script("sessionStorage.clear()")
    b.get(base + "/")
    field = wait(b, lambda d: d.find_elements(By.ID, "login-token"), what="the login form")[0]
    field.send_keys(token)
    b.find_element(By.ID, "login-submit").click()


def test_a_wrong_token_is_refused(cluster, browser, shots):
    login(browser, cluster.http, "not-a-real-token-000000")
    err = wait(browser, lambda d: d.find_elements(By.ID, "login-error"), what="the refusal")[0]
    assert "refused" in err.text
    assert not browser.find_elements(By.ID, "studies-table")
    browser.save_screenshot(str(shots / "01-login-refused.png"))


def test_a_link_with_the_token_signs_in(cluster, browser):
    """`rmgen local --http` prints such a link: the token is taken from the fragment (never
    sent to the server) and leaves the address bar."""
    browser.get(cluster.http + "/healthz")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{cluster.http}/#token={cluster.tokens['submitter']}")
    wait(browser, lambda d: "alice (submitter)" in js(d, "document.getElementById('who').textContent"),
         what="signed in from the link")
    assert "token" not in browser.current_url


def test_studies_and_a_study(cluster, browser, shots, finished):
    study = finished[0]
    login(browser, cluster.http, cluster.tokens["submitter"])
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#studies-table tr[data-id='{study.id}']"),
         what="the study in the list")
    assert "alice (submitter)" in browser.find_element(By.ID, "who-user").text
    browser.save_screenshot(str(shots / "02-studies.png"))
    browser.get(f"{cluster.http}/#/study/{study.id}")
    states = "[...document.querySelectorAll('#study-dag .node')].map(n => n.dataset.state)"
    wait(browser, lambda d: len(js(d, states)) == 9, what="the job graph")
    assert set(js(browser, states)) == {"SUCCEEDED"}
    wait(browser, lambda d: js(d, "!!document.querySelector('#fig-sets')"), what="the figures")
    assert js(browser, "!!document.querySelector('#fig-wins') && !!document.querySelector('#results-table')")
    assert js(browser, "document.querySelectorAll('#fig-sets rect').length") == 6  # 3 sets x 2 RMs
    assert js(browser, "document.querySelector('#fig-id').dataset.points") == "2"
    assert not js(browser, "!!document.querySelector('#cancel-study')")  # read-only for submitters
    browser.save_screenshot(str(shots / "03-study.png"))


def test_a_running_job_changes_live(cluster, browser, shots, alice, finished):
    s = alice.submit_study(LONG_STUDY, source_name="pylong.yaml")
    deadline = time.time() + 120
    job = None
    while time.time() < deadline and job is None:
        jobs = alice.jobs(s.id)
        train = jobs[(jobs["kind"] == "reward")]
        if len(train) and train["state"].iloc[0] in ("ASSIGNED", "RUNNING"):
            job = train["id"].iloc[0]
        time.sleep(0.2)
    assert job, "the long job did not start"
    try:
        _watch_the_running_job(cluster, browser, shots, job)
    finally:
        alice.cancel(s.id)  # nothing of it left running for the next tests


def _watch_the_running_job(cluster, browser, shots, job):
    login(browser, cluster.http, cluster.tokens["submitter"])
    wait(browser, lambda d: d.find_elements(By.ID, "who-user"), what="sign-in")
    browser.get(f"{cluster.http}/#/job/{job}")
    state = lambda d: js(d, "document.querySelector('#job-state .badge')?.dataset.state")
    points = lambda d: int(js(d, "document.querySelector('#loss-chart')?.dataset.points ?? -1"))
    wait(browser, lambda d: state(d) == "RUNNING" and points(d) > 0, timeout=60,
         what="RUNNING with a curve")
    first = points(browser)
    # The training progress is in the coordinator's metrics while the job runs.
    from test_metrics import get, samples, value
    ss = samples(get(cluster.http + "/metrics", cluster.tokens["operator"])[2])
    assert value(ss, "rmgen_job_loss", job=job, kind="reward") is not None
    assert value(ss, "rmgen_job_step", job=job, kind="reward") > 0
    wait(browser, lambda d: points(d) > first, timeout=30, what="the curve to grow")
    browser.save_screenshot(str(shots / "04-job-running.png"))
    wait(browser, lambda d: state(d) == "SUCCEEDED", timeout=240, what="the job to succeed")
    assert points(browser) > first
    wait(browser, lambda d: d.find_elements(By.ID, "job-metrics"), what="the final metrics")
    browser.save_screenshot(str(shots / "05-job-done.png"))
    ss = samples(get(cluster.http + "/metrics", cluster.tokens["operator"])[2])
    assert value(ss, "rmgen_job_loss", job=job, kind="reward") is None  # only running jobs


def test_a_failed_job_shows_its_log(cluster, browser, shots, alice):
    """A study whose catalog is missing on the worker: its first job fails there (bad input:
    not retried), and the job page shows the cause and the failed attempt's log tail."""
    from conftest import SMALL_STUDY

    text = SMALL_STUDY.replace("name: pyclient", "name: pybroken").replace(
        "catalog: synth/datasets.yaml", "catalog: synth/no-such-catalog.yaml")
    s = alice.submit_study(text, source_name="pybroken.yaml")
    alice.wait(s.id, timeout=120)
    jobs = alice.jobs(s.id)
    sft = jobs[jobs["kind"] == "sft"].iloc[0]
    assert sft["state"] == "FAILED", sft["reason"]
    login(browser, cluster.http, cluster.tokens["submitter"])
    wait(browser, lambda d: js(d, "!!document.getElementById('who-user')"), what="sign-in")
    browser.get(f"{cluster.http}/#/study/{s.id}")
    wait(browser, lambda d: js(d, "[...document.querySelectorAll('#study-dag .node')]"
                                  ".some(n => n.dataset.state === 'FAILED')"), what="a failed node")
    browser.get(f"{cluster.http}/#/job/{sft['id']}")
    log = wait(browser, lambda d: js(d, "document.getElementById('failure-log')?.textContent"),
               what="the failure log")
    assert "no-such-catalog" in log or "no-such-catalog" in js(browser, "document.body.textContent")
    assert js(browser, "document.querySelector('#job-state .badge').dataset.state") == "FAILED"
    browser.save_screenshot(str(shots / "07-job-failed.png"))


def test_workers_and_the_operators_drain(cluster, browser, shots):
    login(browser, cluster.http, cluster.tokens["submitter"])
    wait(browser, lambda d: d.find_elements(By.ID, "who-user"), what="sign-in")
    browser.get(f"{cluster.http}/#/workers")
    wait(browser, lambda d: js(d, "!!document.querySelector(\"#workers-table tr[data-id='py-worker']\")"),
         what="the worker")
    assert not js(browser, "!!document.querySelector('#workers-table button.drain')")  # operators only
    login(browser, cluster.http, cluster.tokens["operator"])
    wait(browser, lambda d: "ops (operator)" in d.find_element(By.ID, "who").text, what="sign-in")
    browser.get(f"{cluster.http}/#/workers")
    row = "#workers-table tr[data-id='py-worker']"
    btn = lambda d: js(d, f"document.querySelector(\"{row} button.drain\")?.textContent")
    wait(browser, lambda d: btn(d) == "Drain", what="the drain button")
    assert "2 (2 free)" in js(browser, f"document.querySelector(\"{row}\").textContent")
    click(browser, f"{row} button.drain")
    wait(browser, lambda d: btn(d) == "Undrain", what="draining")
    assert "draining" in js(browser, f"document.querySelector(\"{row}\").textContent")
    browser.save_screenshot(str(shots / "06-workers-draining.png"))
    click(browser, f"{row} button.drain")
    wait(browser, lambda d: btn(d) == "Drain", what="undrained")
