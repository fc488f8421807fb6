"""Promises to careless and hostile users, one test each (issue: no code execution, no file reads through SQL,
no run left running, no hang when the store is down). The threat model is in nbs/index.ipynb."""
import http.server, os, subprocess, sys, threading
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
    from aiinfra_nb.train.model import Preprocessor
    df = pl.DataFrame({'d': [1.0, 2.0, 3.0, 4.0, bad]})
    pre = Preprocessor.fit(df, ['d'], [])
    assert all(map(lambda v: abs(v) < 1e300, pre.numeric['d'].values()))
    x, _ = pre.transform(pl.DataFrame({'d': [1.0, 4.0]}))
    assert x[0, 0] < 0 < x[1, 0]
