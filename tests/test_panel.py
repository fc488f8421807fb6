"""The control panel as a page: `aiinfra dashboard` serves it through Voila on 127.0.0.1, behind a token."""
import os, subprocess, sys, time
from pathlib import Path

import httpx

from test_serve import free_port

BIN = Path(sys.executable).parent


def test_the_page_needs_its_token_and_shows_the_panel(tmp_path, sqlite_url):
    port = free_port()
    proc = subprocess.Popen([str(BIN/'aiinfra'), 'dashboard', '--port', str(port), '--token', 'letmein', '--refresh-s', '1'],
                            env={**os.environ, 'AIINFRA_DB_URL': sqlite_url}, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f'http://127.0.0.1:{port}'
    try:
        for _ in range(300):
            try:
                if httpx.get(f'{base}/', timeout=1).status_code < 500: break  # up (it redirects to its login)
            except httpx.HTTPError: pass
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert httpx.get(f'{base}/', timeout=30).status_code in (302, 403)  # no token, no panel
        page = httpx.get(f'{base}/?token=letmein', timeout=120)
        assert page.status_code == 200 and 'aiinfra control panel' in page.text
        assert 'application/vnd.jupyter.widget-view+json' in page.text and 'Traceback' not in page.text
        import psutil  # the page's server gets its token from a private file, not its command line (which `ps` shows everyone)
        assert not [c.cmdline() for c in psutil.Process(proc.pid).children(recursive=True) if 'letmein' in ' '.join(c.cmdline())]
    finally:
        proc.terminate(); proc.communicate(timeout=60)
