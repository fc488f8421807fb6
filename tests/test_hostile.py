"""Promises to careless and hostile users, one test each (issue: no code execution, no file reads through SQL,
no run left running, no hang when the store is down). The threat model is in nbs/index.ipynb."""
import http.server, os, re, subprocess, sys, threading
from pathlib import Path

import pytest
import torch

from aiinfra_nb.data.sql import SQLError, sql
from aiinfra_nb.ops.store import get_engine

BIN = Path(sys.executable).parent


@pytest.fixture
def http_probe():
    "A local HTTP server that counts the requests it gets"
    hits = []
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self): hits.append(self.path); self.send_response(200); self.end_headers(); self.wfile.write(b'a,b\n1,2\n')
        def log_message(self, *a): pass
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{server.server_address[1]}', hits
    server.shutdown()


READS = ["select * from read_csv('{target}', has_header => false)", "select * from READ_CSV('{target}')",
         'select * from "read_csv"(\'{target}\')', "select * from read_parquet('{target}')", "select * from read_ipc('{target}')",
         "select * from read_json('{target}')", "with t as (select * from read_csv('{target}')) select * from t",
         "select * from runs where id in (select column_1 from read_csv('{target}'))",
         "select * from runs r join read_csv('{target}') f on true", "select * from runs, lateral read_csv('{target}')",
         "select * from (select * from (select * from Read_Csv('{target}')) a) b"]


@pytest.mark.parametrize('query', READS)
def test_sql_reads_no_file_and_fetches_no_url(tmp_path, query, http_probe):
    "Table functions are refused in every spelling and position: no local file (the store's own included), no URL"
    url, hits = http_probe
    store = tmp_path/'store.db'
    get_engine(f'sqlite:///{store}')
    for target in ('/etc/passwd', str(store), f'{url}/data.csv'):
        with pytest.raises(SQLError, match='not allowed|not a table'):
            sql(query.format(target=target), tmp_path/'catalog', engine=get_engine(f'sqlite:///{store}'))
    assert hits == []


def test_sql_from_the_cli_is_one_line_and_shows_nothing(tmp_path):
    p = subprocess.run([str(BIN/'aiinfra'), 'sql', "select * from read_csv('/etc/passwd', has_header => false)"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, 'AIINFRA_DB_URL': f"sqlite:///{tmp_path/'s.db'}"})
    assert p.returncode == 1 and 'root:' not in p.stdout + p.stderr
    assert p.stderr.count('\n') == 1 and p.stderr.startswith('aiinfra: error:') and 'Traceback' not in p.stderr


def test_a_pickle_checkpoint_runs_nothing(tmp_path):
    "A pickle planted as an interrupted training's last.ckpt is refused by weights_only loading: the payload never runs"
    from aiinfra_nb.train.fit import CheckpointError, _read_checkpoint
    marker = tmp_path/'pwned'
    class Evil:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    torch.save({'state_dict': {}, 'epoch': 1, 'x': Evil()}, tmp_path/'last.ckpt')
    with pytest.raises(CheckpointError, match='holds more than weights'): _read_checkpoint(tmp_path/'last.ckpt')
    assert not marker.exists()


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf'), 1e308])
def test_non_finite_values_do_not_zero_a_feature(bad):
    "NaN, inf or 1e308 in a numeric column: the statistics stay finite, and the feature keeps its information"
    import polars as pl
    from aiinfra_nb.models.tabular import Preprocessor
    df = pl.DataFrame({'d': [1.0, 2.0, 3.0, 4.0, bad]})
    pre = Preprocessor.fit(df, ['d'], [])
    assert all(map(lambda v: abs(v) < 1e300, pre.numeric['d'].values()))
    x, _ = pre.transform(pl.DataFrame({'d': [1.0, 4.0]}))
    assert x[0, 0] < 0 < x[1, 0]


def test_store_cut_during_fit_fails_the_run_runs_the_shutdown_command_and_returns(tmp_path, pg_url):
    """The store stops accepting connections mid-training: fit raises a StoreError within a bound, the shutdown command runs,
    and the run is recorded as failed once the store is back"""
    import time
    import sqlalchemy as sa
    from aiinfra_nb.ops.store import query, runs
    marker = tmp_path/'machine-off'
    script = tmp_path/'train.py'
    script.write_text(TRAIN_SMALL)
    env = {**os.environ, 'AIINFRA_DB_URL': pg_url, 'AIINFRA_DATA_DIR': str(tmp_path/'data'), 'AIINFRA_TRAIN_CHECKPOINTS': str(tmp_path/'ckpt'),
           'AIINFRA_TRAIN_SHUTDOWN_COMMAND': f'touch {marker}', 'AIINFRA_RECORD_END_FLUSH_S': '5', 'PYTHONUNBUFFERED': '1'}
    db = sa.make_url(pg_url).database
    admin = sa.create_engine(sa.make_url(pg_url).set(database='postgres'), isolation_level='AUTOCOMMIT')
    t0 = time.time()
    p = subprocess.Popen([sys.executable, str(script)], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (tmp_path/'ckpt/job/last.ckpt').exists():
        assert p.poll() is None and time.time() - t0 < 120, p.communicate()
        time.sleep(0.05)
    with admin.connect() as c:  # the store goes away
        c.exec_driver_sql(f'ALTER DATABASE {db} ALLOW_CONNECTIONS false')
        c.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()")
    time.sleep(7)
    with admin.connect() as c: c.exec_driver_sql(f'ALTER DATABASE {db} ALLOW_CONNECTIONS true')  # ...and comes back
    out, err = p.communicate(timeout=120)
    assert time.time() - t0 < 120
    assert p.returncode == 1 and 'StoreError' in err and marker.exists(), err[-3000:]
    (r,) = query(sa.select(runs.c.status, runs.c.error).where(runs.c.kind == 'train'), get_engine(pg_url))
    assert r['status'] == 'failed' and 'store' in r['error']
    admin.dispose()


TRAIN_SMALL = """
from datetime import datetime, timedelta
import polars as pl, torch
from aiinfra_nb.train.datamodule import TabularDataModule
from aiinfra_nb.train.fit import fit
n = 40_000
d = torch.rand(n, generator=torch.Generator().manual_seed(0)) * 2000
df = pl.DataFrame({'time_hour': [datetime(2013, 1, 1) + timedelta(minutes=i) for i in range(n)], 'distance': d.tolist(),
                   'delayed': (d > 1000).tolist()})
fit(TabularDataModule(df, 'delayed', batch_size=512), name='job', hidden=[16], max_epochs=2, accelerator='cpu', progress=False)
"""


def test_sigterm_to_papermill_ends_the_run_interrupted_and_stops_its_kernel(tmp_path):
    "A stopped DVC stage (SIGTERM to papermill): the run is interrupted, its queued rows flushed, and no kernel outlives it"
    import signal, time, nbformat, psutil
    import sqlalchemy as sa
    from aiinfra_nb.ops.store import query, runs
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in (
        'import os, time\nfrom aiinfra_nb.ops.record import log_metrics',
        'log_metrics({"started": 1}); open("kernel.pid", "w").write(str(os.getpid()))\ntime.sleep(120)')])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'python3', 'language': 'python'}
    nbformat.write(nb, tmp_path/'slow.ipynb')
    env = {**os.environ, 'AIINFRA_DB_URL': f"sqlite:///{tmp_path/'s.db'}"}
    p = subprocess.Popen([str(BIN/'papermill'), '-k', 'python3', '--engine', 'aiinfra', '--no-progress-bar', 'slow.ipynb', 'out.ipynb'],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (tmp_path/'kernel.pid').exists():
        assert p.poll() is None and time.time() - t0 < 60, p.communicate()
        time.sleep(0.1)
    kernel = int((tmp_path/'kernel.pid').read_text())
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert p.returncode != 0
    (r,) = query(sa.select(runs.c.id, runs.c.status, runs.c.error), get_engine(env['AIINFRA_DB_URL']))
    assert (r['status'], r['error']) == ('interrupted', 'SIGTERM')
    assert query(f"SELECT value FROM metrics WHERE run_id = '{r['id']}' AND key = 'started'", get_engine(env['AIINFRA_DB_URL'])) == [{'value': 1.0}]
    time.sleep(1)
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE


def test_logging_never_blocks_on_a_dead_store(tmp_path):
    "A service logging through StoreHandler while the store is unreachable: each call returns at once or within put_wait_s"
    code = """
import logging, sys, time
from aiinfra_nb.ops.record import StoreHandler, writer
from aiinfra_nb.ops.store import create_store_engine
h = StoreHandler(service='api')
log = logging.getLogger('svc'); log.addHandler(h); log.setLevel(logging.INFO)
if sys.argv[1] == 'open':  # the store was reachable at start, then went away: the writer's queue fills
    writer(create_store_engine('postgresql://nobody@127.0.0.1:1/none'))
    import aiinfra_nb.ops.record as r
    from aiinfra_nb.core import load_settings
    r._default = (load_settings(), writer(create_store_engine('postgresql://nobody@127.0.0.1:1/none')))
t0 = time.monotonic(); worst = 0
for i in range(300):
    t = time.monotonic(); log.info('request %d', i); worst = max(worst, time.monotonic() - t)
dropped = r._default[1].dropped if sys.argv[1] == 'open' else h.dropped
print('TOTAL', time.monotonic() - t0, 'WORST', worst, 'DROPPED', dropped)
"""
    env = {**os.environ, 'AIINFRA_DB_URL': 'postgresql://nobody@127.0.0.1:1/none', 'AIINFRA_RECORD_QUEUE_ROWS': '100',
           'AIINFRA_RECORD_PUT_WAIT_S': '0.05', 'AIINFRA_RECORD_END_FLUSH_S': '1'}
    for case, lost in (('never-opened', 300), ('open', 200)):  # never reachable: all dropped; went away: all beyond the queue
        p = subprocess.run([sys.executable, '-c', code, case], capture_output=True, text=True, timeout=120, env=env)
        line = next(l for l in p.stdout.splitlines() if l.startswith('TOTAL')).split()
        total, worst, dropped = float(line[1]), float(line[3]), int(line[5])
        assert worst < 1 and total < 30 and dropped == lost and 'Traceback' not in p.stderr, p.stdout + p.stderr[-2000:]


def test_concurrent_saves_of_one_dataset_all_succeed(tmp_path):
    "Four processes saving the same dataset over and over: none deletes another's temporary file"
    code = """
import sys, polars as pl
from aiinfra_nb.data.io import Catalog
cat = Catalog(sys.argv[1])
for i in range(15): cat.save(pl.DataFrame({'x': list(range(20_000))}), 'raw/shared')
print('OK')
"""
    env = {**os.environ, 'AIINFRA_DB_URL': f"sqlite:///{tmp_path/'s.db'}"}
    procs = [subprocess.Popen([sys.executable, '-c', code, str(tmp_path/'cat')], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [o.strip() for o, _ in outs] == ['OK'] * 4, [e[-1500:] for _, e in outs]
    assert sorted(p.name for p in (tmp_path/'cat/raw').iterdir()) == ['shared.meta.json', 'shared.parquet']


BAD_INPUTS = [  # (command, environment, what the one line must say)
    (['status'], {'AIINFRA_DB_URL': 'postgresql://u@127.0.0.1:99999/x'}, 'port'),
    (['status'], {'AIINFRA_DB_URL': 'sqlite:///{tmp}/afile/store.db'}, 'cannot open the store'),
    (['status'], {'AIINFRA_DB_URL': 'sqlite:///{tmp}/notadb.db'}, 'cannot open the store'),
    (['status'], {'AIINFRA_DB_URL': 'mysql://x@h/db'}, 'unknown scheme'),
    (['status'], {'AIINFRA_DB_URL': 'postgresql://bob:hunter2@127.0.0.1:1/x?password=hunter2'}, 'cannot open the store'),
    (['status'], {'AIINFRA_HOME': ''}, 'AIINFRA_HOME is empty'),
    (['status'], {'AIINFRA_DATA_DIR': ''}, 'AIINFRA_DATA_DIR is empty'),
    (['status'], {'AIINFRA_SERVICE_PORT': '999999'}, 'between 1 and 65535'),
    (['status'], {'AIINFRA_RECORD_QUEUE_ROWS': '0'}, 'at least 1'),
    (['status'], {'AIINFRA_PROJECT_ROOT': '{tmp}'}, None),  # the documented override works
    (['runs', '--limit', '-5'], {}, 'limit -5'),
    (['runs', '--limit', '99999999'], {}, 'limit 99999999'),
    (['runs', '--status', 'bogus'], {}, "status 'bogus'"),
    (['logs', '--level', 'loud'], {}, "level 'loud'"),
    (['sql', 'drop table runs'], {}, 'only queries'),
    (['sql', "select '--' as a"], {}, None),
    (['models', 'show', 'nope'], {}, "no model 'nope'"),
    (['models', 'show', '../../etc'], {}, 'invalid model name'),
    (['models', 'promote', 'nope', '1'], {}, "no version 1 of model 'nope'"),
]


@pytest.mark.parametrize('args, env, says', BAD_INPUTS, ids=[' '.join(a) + ' ' + ' '.join(e) for a, e, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, args, env, says):
    (tmp_path/'afile').write_text('a file, not a folder')
    (tmp_path/'notadb.db').write_text('this is not a database ' * 100)
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    p = subprocess.run([str(BIN/'aiinfra'), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, 'AIINFRA_HOME': str(tmp_path/'home'), **env})
    assert 'Traceback' not in p.stderr + p.stdout and 'hunter2' not in p.stderr + p.stdout, p.stderr[-2000:]
    if says is None: assert p.returncode == 0, p.stderr; return
    assert p.returncode == 1 and p.stderr.startswith('aiinfra: error:') and p.stderr.count('\n') == 1, p.stderr
    assert says in p.stderr, p.stderr


def test_a_foreign_database_is_never_given_our_tables(store_url):
    "A database that holds someone else's tables is refused, not sprayed with aiinfra's schema"
    import sqlalchemy as sa
    from aiinfra_nb.ops.store import StoreError, create_store_engine
    eng = create_store_engine(store_url)
    with eng.begin() as c: c.exec_driver_sql('CREATE TABLE invoices (id INTEGER PRIMARY KEY)')
    with pytest.raises(StoreError, match=r'is not an aiinfra store: it holds other tables \(invoices\)'): get_engine(store_url)
    assert sa.inspect(eng).get_table_names() == ['invoices']
    eng.dispose()


def test_rows_postgresql_would_refuse_are_refused_at_the_call(store_url):
    "What SQLite keeps but PostgreSQL refuses (over-long keys, 64-bit steps, NUL) is a clear error where it is logged, on both"
    from aiinfra_nb.ops.record import RecordError, flush, log_event, start_run
    from aiinfra_nb.ops.store import query
    eng = get_engine(store_url)
    with start_run('etl', engine=eng) as run:
        with pytest.raises(RecordError, match='expected 1 to 255 characters'): run.log_metrics({'k' * 300: 1.0})
        with pytest.raises(RecordError, match='step 4294967296: expected a 32-bit'): run.log_metrics({'loss': 1.0}, step=2**32)
        with pytest.raises(RecordError, match="metric 'loss' = 'high'"): run.log_metrics({'loss': 'high'})
        log_event('a NUL \x00 in a message', run=run)
    flush()
    assert query("SELECT message FROM events", eng) == [{'message': 'a NUL \\0 in a message'}]


def test_save_many_names_every_broken_table_and_writes_none(tmp_path):
    import polars as pl
    from aiinfra_nb.data.contracts import Column, Contract, ContractError
    from aiinfra_nb.data.io import Catalog
    c = Contract('t', columns=[Column('x', 'Int64', min=0)])
    cat = Catalog(tmp_path/'cat')
    bad = pl.DataFrame({'x': [-1]})
    with pytest.raises(ContractError, match='2 of 3 tables break their contract') as e:
        cat.save_many({'raw/a': bad, 'raw/b': pl.DataFrame({'x': [1]}), 'raw/c': bad}, contracts={'raw/a': c, 'raw/b': c, 'raw/c': c})
    assert 'raw/a:' in str(e.value) and 'raw/c:' in str(e.value) and not (tmp_path/'cat').exists()


DEGENERATE = [  # (what the data or arguments are, the DataModule, fit's keyword arguments, what the error says)
    ('empty', lambda pl: pl.DataFrame({'x': [], 'delayed': []}, schema={'x': pl.Float64, 'delayed': pl.Boolean}), {}, 'has 0 row(s)'),
    ('one row', lambda pl: pl.DataFrame({'x': [1.0], 'delayed': [True]}), {}, 'has 1 row(s)'),
    ('one class', lambda pl: pl.DataFrame({'x': [1.0, 2.0, 3.0, 4.0], 'delayed': [True] * 4}), {}, 'needs both classes'),
    ('null target', lambda pl: pl.DataFrame({'x': [1.0, 2.0, 3.0], 'delayed': [True, None, False]}), {}, 'has 1 missing values'),
    ('no epochs', lambda pl: pl.DataFrame({'x': [1.0, 2.0, 3.0, 4.0], 'delayed': [True, False] * 2}), {'max_epochs': 0}, 'max_epochs 0'),
    ('bad precision', lambda pl: pl.DataFrame({'x': [1.0, 2.0, 3.0, 4.0], 'delayed': [True, False] * 2}), {'precision': '12-bit'},
     "Fabric refused these arguments: Precision '12-bit' is invalid"),
    ('bad strategy', lambda pl: pl.DataFrame({'x': [1.0, 2.0, 3.0, 4.0], 'delayed': [True, False] * 2}), {'strategy': 'nope'},
     "Fabric refused these arguments: You selected an invalid strategy name"),
]


@pytest.mark.parametrize('what, frame, kw, says', DEGENERATE, ids=[d[0] for d in DEGENERATE])
def test_degenerate_training_is_refused_recorded_and_registers_nothing(tmp_path, monkeypatch, what, frame, kw, says):
    import polars as pl
    import sqlalchemy as sa
    from aiinfra_nb.ops.store import query, runs
    from aiinfra_nb.train.datamodule import TabularDataModule
    from aiinfra_nb.train.fit import fit
    from aiinfra_nb.train.datamodule import TrainingError
    monkeypatch.setenv('AIINFRA_DATA_DIR', str(tmp_path/'data')); monkeypatch.setenv('AIINFRA_TRAIN_CHECKPOINTS', str(tmp_path/'ckpt'))
    with pytest.raises(TrainingError, match=re.escape(says)):
        fit(TabularDataModule(frame(pl), 'delayed', split='random', batch_size=2), name='degenerate', progress=False, **kw)
    assert query('SELECT count(*) AS n FROM models') == [{'n': 0}]
    assert all(r['status'] == 'failed' for r in query(sa.select(runs.c.status)))  # a run, if one started, is not left running
    with pytest.raises(TrainingError, match='batch_size 0'): TabularDataModule(frame(pl), 'delayed', batch_size=0)


def test_secrets_in_parameters_are_not_recorded(tmp_path):
    "A password passed as a parameter (`papermill -p db_password ...`) or inside a URL is masked in the run's record"
    from aiinfra_nb.ops.record import start_run
    from aiinfra_nb.ops.store import query
    import sqlalchemy as sa
    from aiinfra_nb.ops.store import runs
    with start_run('etl', params={'db_password': 'hunter2', 'source': 'postgresql://etl:hunter2@db/x', 'rows': 5}): pass
    (r,) = query(sa.select(runs.c.params))
    assert r['params'] == {'db_password': '***', 'source': 'postgresql://etl:***@db/x', 'rows': 5}
