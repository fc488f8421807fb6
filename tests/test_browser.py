"""The control panel in a real browser: headless Chromium (Playwright driving the system browser) on the Voila page that
`aiinfra dashboard` serves, and on nbs/tutorials/control_panel.ipynb run in JupyterLab. Both servers are started and
stopped here; screenshots of every tab are kept in .test-artifacts/."""
import contextlib, os, shutil, subprocess, sys, time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, copy_repo
from test_serve import free_port

BIN = Path(sys.executable).parent
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
ARTIFACTS = ROOT/'.test-artifacts'
TABS = ('Overview', 'Projects', 'Runs', 'Machines & cost', 'Services', 'Alerts', 'Logs')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run']

pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason='no chromium: `make test` installs it (apt) when root'), pytest.mark.browser]


def wait_http(url: str, proc: subprocess.Popen, seconds: float = 120):
    "Until the server at `url` answers (anything but an error)"
    for _ in range(int(seconds * 5)):
        try:
            if httpx.get(url, timeout=1).status_code < 500: return
        except httpx.HTTPError: pass
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    proc.terminate()
    raise TimeoutError(f"{url} did not answer: {proc.communicate(timeout=60)[0][-3000:]}")


@contextlib.contextmanager
def browser_page(url: str, width: int = 1400, height: int = 900):
    "A page of headless Chromium (the system's) at `url`"
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={'width': width, 'height': height})
            page.goto(url, timeout=120_000)
            yield page
        finally: browser.close()


def open_local_page(path: Path, shot: str) -> dict:
    "A local HTML file in headless Chromium: its text, its Plotly charts drawn with data, the errors it raised; a full-page screenshot in .test-artifacts/"
    from playwright.sync_api import sync_playwright
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={'width': 1200, 'height': 900})
            page.on('pageerror', lambda e: errors.append(str(e)))
            page.on('console', lambda m: m.type == 'error' and errors.append(m.text))
            page.on('requestfailed', lambda r: errors.append(f"{r.url}: {r.failure}"))
            page.goto(path.as_uri(), wait_until='load', timeout=120_000)
            page.wait_for_timeout(500)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS/shot), full_page=True)
            return dict(text=page.inner_text('body'), charts=page.locator('.js-plotly-plot:has(.trace)').count(), errors=errors)
        finally: browser.close()


def kernel_ready(page, seconds: float = 180):
    "Until the notebook's kernel is idle; on a loaded machine JupyterLab may ask which kernel first, and a person picks python3"
    for _ in range(int(seconds)):
        ask = page.locator('.jp-Dialog:has-text("Select Kernel")')
        if ask.count():
            ask.locator('select').select_option(label='python3')
            ask.locator('.jp-mod-accept').click()
        if page.get_by_text('python3 | Idle').count(): return
        page.wait_for_timeout(1000)
    raise TimeoutError('the notebook kernel never became idle')


def run_all_cells(page, tries: int = 4):
    "Run > Run All Cells once the kernel is idle, until a cell is seen running (a click while JupyterLab still connects the kernel is lost)"
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    started = page.locator('.jp-InputPrompt:has-text("[*]"), .jp-InputPrompt:has-text("[1]")').first
    for attempt in range(tries):
        kernel_ready(page)
        page.get_by_text('Run', exact=True).first.click()
        page.get_by_text('Run All Cells', exact=True).first.click()
        try: return started.wait_for(state='attached', timeout=45_000)
        except PlaywrightTimeout:
            if attempt == tries - 1: raise


def check_tabs(page, where: str, expect: dict):
    "Click every tab of the panel, assert on what it shows, keep a screenshot"
    ARTIFACTS.mkdir(exist_ok=True)
    for tab in TABS:
        page.get_by_role('tab', name=tab).first.click()
        for text in expect[tab]: page.locator(f'text={text} >> visible=true').first.wait_for(timeout=60_000)  # on the tab shown
        page.screenshot(path=str(ARTIFACTS/f"{where}-{tab.split()[0].lower()}.png"), full_page=True)


EXPECT = {'Overview': ['idle machines', 'failing runs'], 'Projects': ['fleet-00', 'production_models'], 'Runs': ['latest runs', 'fleet-01'],
          'Machines & cost': ['gpu-node-7', 'machine cost per project and day'], 'Services': ['p95_ms', 'billing-key'],
          'Alerts': ['machine_idle', 'latest check of each model'], 'Logs': ['saved raw/table']}


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    "A small demo company in a store of its own"
    url = f"sqlite:///{tmp_path/'central.db'}"
    monkeypatch.setenv('AIINFRA_DB_URL', url)
    from aiinfra_nb.demo import demo_fleet
    demo_fleet(tmp_path/'portfolio', projects=3, run=2, services=1, calls=30, progress=False)
    return url


def test_voila_page_shows_every_tab(fleet):
    port = free_port()
    proc = subprocess.Popen([str(BIN/'aiinfra'), 'dashboard', '--port', str(port), '--token', 'seeme', '--refresh-s', '2'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f'http://127.0.0.1:{port}/', proc)
        with browser_page(f'http://127.0.0.1:{port}/?token=seeme') as page:
            page.get_by_role('tab', name='Machines & cost').first.wait_for(timeout=120_000)
            check_tabs(page, 'voila', EXPECT)
            assert 'Traceback' not in page.inner_text('body')
    finally:
        proc.terminate(); proc.communicate(timeout=60)


def test_control_panel_tutorial_runs_in_jupyterlab(tmp_path):
    "JupyterLab on 127.0.0.1 opens nbs/tutorials/control_panel.ipynb, runs it, and the panel shows every tab"
    port, token = free_port(), 'labtoken'
    dirs = {k: tmp_path/k.lower() for k in ('JUPYTER_RUNTIME_DIR', 'JUPYTER_CONFIG_DIR', 'IPYTHONDIR')}
    for d in dirs.values(): d.mkdir()
    env = {**os.environ, **{k: str(v) for k, v in dirs.items()}, 'AIINFRA_HOME': str(tmp_path/'home'),
           'PATH': f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop('AIINFRA_DB_URL', None)
    repo = copy_repo(tmp_path/'repo')  # JupyterLab saves what it runs: never into the repository itself
    proc = subprocess.Popen([str(BIN/'jupyter'), 'lab', '--no-browser', '--allow-root', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
                             f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={repo}'],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f'http://127.0.0.1:{port}/api/status?token={token}', proc)
        with browser_page(f'http://127.0.0.1:{port}/lab/tree/nbs/tutorials/control_panel.ipynb?token={token}', 1500, 1000) as page:
            page.locator('.jp-Notebook').first.wait_for(timeout=120_000)
            run_all_cells(page)
            try:
                page.get_by_role('tab', name='Machines & cost').first.wait_for(timeout=300_000)
                check_tabs(page, 'jupyterlab', EXPECT)
                page.get_by_text('of fleet-03: finished').first.wait_for(timeout=180_000)  # the RunWatch widget saw its run end
            except Exception:
                ARTIFACTS.mkdir(exist_ok=True); page.screenshot(path=str(ARTIFACTS/'jupyterlab-failed.png'), full_page=True)
                raise
            assert 'Traceback' not in page.inner_text('.jp-Notebook')
    finally:
        proc.terminate(); proc.communicate(timeout=60)
