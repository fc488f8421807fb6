"""Shared fixtures: a fresh store on each backend, on a real SQLite file and a real PostgreSQL server; how the run is spread
over processes (pytest-xdist): independent tests side by side, a notebook's cells in order in one process, and the tests
that share buildah's image storage one after another."""
import os, subprocess, sys, tempfile, uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get('AIINFRA_TEST_PG_URL', 'postgresql+psycopg://postgres@127.0.0.1:5432/postgres')
_pg_skip_reason = None


@pytest.fixture(autouse=True)
def aiinfra_home(tmp_path, monkeypatch):
    "Every test gets its own AIINFRA_HOME (and so its own default store); none touches ~/.aiinfra"
    home = tmp_path/'aiinfra-home'
    monkeypatch.setenv('AIINFRA_HOME', str(home))
    monkeypatch.delenv('AIINFRA_DB_URL', raising=False)
    return home


def _pg_admin():
    global _pg_skip_reason
    try:
        eng = sa.create_engine(PG_ADMIN_URL, isolation_level='AUTOCOMMIT', connect_args={'connect_timeout': 3})
        with eng.connect() as c: c.exec_driver_sql('SELECT 1')
        return eng
    except Exception as e:
        _pg_skip_reason = f"PostgreSQL not reachable at {PG_ADMIN_URL} ({str(e).splitlines()[0]}): `make test` installs it when root"
        return None


@pytest.fixture
def pg_url():
    "A fresh, empty PostgreSQL database on the real server, dropped afterwards"
    admin = _pg_admin()
    if admin is None: pytest.skip(_pg_skip_reason)
    name = f'aiinfra_test_{uuid.uuid4().hex[:12]}'
    with admin.connect() as c: c.exec_driver_sql(f'CREATE DATABASE {name}')
    yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    from aiinfra_nb.ops import store
    for key in [k for k in store._engines if k[0].endswith(f'/{name}')]: store._engines.pop(key).dispose()
    with admin.connect() as c: c.exec_driver_sql(f'DROP DATABASE IF EXISTS {name} WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path/'store.db'}"


@pytest.fixture(params=['sqlite', 'postgresql'])
def store_url(request, tmp_path):
    "The same test on both backends"
    return request.getfixturevalue('sqlite_url' if request.param == 'sqlite' else 'pg_url')


def copy_repo(dst: Path) -> Path:
    "A copy of the project's files (tracked, and untracked but not ignored) in `dst`"
    import shutil
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT, capture_output=True, text=True, check=True)
    for f in files.stdout.splitlines():
        if (ROOT/f).is_file():
            (dst/f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT/f, dst/f)
    return dst


def run_py(code: str, env: dict | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    "Run `code` in a fresh Python process of this environment"
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


# Tests that must not run side by side, by group: one group runs in one process, in order
SERIAL = {'images.ipynb': 'images'}  # the images tutorial builds in the same container storage as tests/test_images.py


def pytest_configure(config):
    # each process of the run its own AIINFRA_HOME (the tutorials' default store); each test sets its own anyway (above)
    os.environ['AIINFRA_HOME'] = tempfile.mkdtemp(prefix='aiinfra-test-home-')


# The longest first, so that no process is left with a long test while the others have finished (the rest keeps its order)
LONGEST_FIRST = ('test_browser.py', 'test_labelling.py', 'test_orchestrate.py', 'test_scaffold.py', 'test_images.py', 'images.ipynb', 'control_panel.ipynb', 'schedules.ipynb', 'monitoring.ipynb', 'test_monitor.py', 'test_pipeline.py',
                 'new_project.ipynb', 'test_train.py', 'test_serve.py')


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:  # before xdist's own hook reads the groups
        if item.path.suffix == '.ipynb':  # nbval: a notebook's cells are one story, told in order by one kernel
            item.add_marker(pytest.mark.xdist_group(SERIAL.get(item.path.name, item.path.name)))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests, a notebook's cells stay in order


def pytest_terminal_summary(terminalreporter):
    if _pg_skip_reason:
        terminalreporter.write_sep('!', f'PostgreSQL store tests SKIPPED: {_pg_skip_reason}', red=True, bold=True)
