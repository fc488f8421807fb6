"""The reference pipeline under real DVC, in a throwaway copy of the repository."""
import os, subprocess, sys
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from aiinfra_nb.data import io
from aiinfra_nb.ops.store import query, runs
from conftest import copy_repo

BIN = Path(sys.executable).parent


@pytest.fixture
def repo(tmp_path):
    "A git repository holding a copy of the project, with the pipeline cut to a two-day sample"
    r = copy_repo(tmp_path/'repo')
    (r/'dvc.lock').unlink(missing_ok=True)
    params = (r/'params.yaml').read_text().replace('sample_days: 0', 'sample_days: 2')
    (r/'params.yaml').write_text(params)
    os.environ.update(PATH=f"{BIN}:{os.environ['PATH']}", DVC_NO_ANALYTICS='1', DVC_SITE_CACHE_DIR=str(tmp_path/'dvc-site'),
                      GIT_AUTHOR_NAME='t', GIT_AUTHOR_EMAIL='t@t', GIT_COMMITTER_NAME='t', GIT_COMMITTER_EMAIL='t@t')
    git(r, 'init', '-q'); git(r, 'add', '-A'); git(r, 'commit', '-qm', 'copy')
    return r


def git(repo, *args): return subprocess.run(['git', *args], cwd=repo, check=True, capture_output=True, text=True)


def dvc(repo, *args) -> str:
    p = subprocess.run([str(BIN/'dvc'), *args], cwd=repo, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr


def stage_runs() -> list[tuple]:
    return [(r['kind'], r['status'], r['params'].get('threshold')) for r in
            query(sa.select(runs.c.kind, runs.c.status, runs.c.params).order_by(runs.c.started_at))]


def test_repro_records_runs_and_reruns_only_what_changed(repo):
    dvc(repo, 'repro')
    assert stage_runs() == [('ingest', 'finished', None), ('etl', 'finished', 15)]
    rows = {m['key']: m['value'] for m in query("SELECT key, value FROM metrics WHERE key LIKE 'rows/%'")}
    cat = io.Catalog(repo/'data')
    assert rows['rows/raw/flights'] == cat.meta('raw/flights')['rows'] > 1000
    assert rows['rows/processed/features'] == cat.meta('processed/features')['rows'] > 1000

    out = dvc(repo, 'repro')  # nothing changed: nothing runs
    assert "Stage 'ingest' didn't change" in out and "Stage 'etl' didn't change" in out
    assert len(stage_runs()) == 2

    git(repo, 'add', '-A'); git(repo, 'commit', '-qm', 'threshold 15')
    before = cat.load('processed/features').select(pl.col('delayed').mean()).collect().item()
    (repo/'params.yaml').write_text((repo/'params.yaml').read_text().replace('threshold: 15', 'threshold: 60'))
    out = dvc(repo, 'repro')  # an ETL parameter: only the ETL reruns
    assert "Stage 'ingest' didn't change" in out and "Running stage 'etl'" in out
    assert stage_runs()[-1] == ('etl', 'finished', 60) and len(stage_runs()) == 3
    after = cat.load('processed/features').select(pl.col('delayed').mean()).collect().item()
    assert after < before
    # the version of the committed revision, read back through DVC
    old = cat.load('processed/features', rev='HEAD').select(pl.col('delayed').mean()).collect().item()
    assert old == before
    with pytest.raises(io.DatasetError, match="cannot read 'processed/features' at revision 'nope'"):
        cat.load('processed/features', rev='nope')


def test_exp_run_with_a_parameter(repo):
    dvc(repo, 'repro')
    git(repo, 'add', '-A'); git(repo, 'commit', '-qm', 'baseline')
    dvc(repo, 'exp', 'run', '-S', 'etl.threshold=30')
    assert stage_runs()[-1] == ('etl', 'finished', 30)
    shown = dvc(repo, 'exp', 'show', '--json')  # the experiment, with its parameter, next to the baseline
    assert '"threshold": 30' in shown and '"threshold": 15' in shown
