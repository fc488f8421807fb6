"""The reference pipeline under real DVC, in a throwaway copy of the repository."""
import json, os, subprocess, sys
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


STAGES = ('ingest', 'etl', 'train', 'evaluate')


def stage_runs() -> list[tuple]:
    "(stage, status, threshold) of each pipeline notebook run, in order"
    return [(r['name'], r['status'], r['params'].get('threshold')) for r in
            query(sa.select(runs.c.name, runs.c.status, runs.c.params).where(runs.c.name.in_(STAGES)).order_by(runs.c.started_at))]


def test_repro_records_runs_and_reruns_only_what_changed(repo):
    dvc(repo, 'repro')
    assert stage_runs() == [('ingest', 'finished', None), ('etl', 'finished', 15), ('train', 'finished', None), ('evaluate', 'finished', None)]
    rows = {m['key']: m['value'] for m in query("SELECT key, value FROM metrics WHERE key LIKE 'rows/%'")}
    cat = io.Catalog(repo/'data')
    assert rows['rows/raw/flights'] == cat.meta('raw/flights')['rows'] > 1000
    assert rows['rows/processed/features'] == cat.meta('processed/features')['rows'] > 1000

    out = dvc(repo, 'repro')  # nothing changed: nothing runs
    assert all(f"Stage '{s}' didn't change" in out for s in STAGES), out
    assert len(stage_runs()) == 4

    git(repo, 'add', '-A'); git(repo, 'commit', '-qm', 'threshold 15')
    before = cat.load('processed/features').select(pl.col('delayed').mean()).collect().item()
    (repo/'params.yaml').write_text((repo/'params.yaml').read_text().replace('threshold: 15', 'threshold: 60'))
    out = dvc(repo, 'repro')  # an ETL parameter: the ETL and what depends on it rerun, not the ingest
    assert "Stage 'ingest' didn't change" in out and "Running stage 'etl'" in out
    assert stage_runs()[4:] == [('etl', 'finished', 60), ('train', 'finished', None), ('evaluate', 'finished', None)]
    after = cat.load('processed/features').select(pl.col('delayed').mean()).collect().item()
    assert after < before
    # the version of the committed revision, read back through DVC
    old = cat.load('processed/features', rev='HEAD').select(pl.col('delayed').mean()).collect().item()
    assert old == before
    with pytest.raises(io.DatasetError, match="cannot read 'processed/features' at revision 'nope'"):
        cat.load('processed/features', rev='nope')


def test_train_stage_registers_evaluates_and_promotes(repo):
    dvc(repo, 'repro')
    models = query(sa.select(sa.text('name, version, stage, metrics')).select_from(sa.table('models')))
    assert [(m['name'], m['version'], m['stage']) for m in models] == [('flights-delay', 1, 'production')]
    metrics = json.loads((repo/'data/eval/metrics.json').read_text())
    assert 0 < metrics['auc'] <= 1 and metrics['rows'] > 100
    assert 'fpr,tpr,threshold' in (repo/'data/eval/roc.csv').read_text().splitlines()[0]
    assert 'auc' in dvc(repo, 'metrics', 'show')
    fit_run = query(sa.select(runs).where(runs.c.name == 'flights-delay'))[0]  # the training run of `fit`, with its cost
    assert fit_run['status'] == 'finished' and fit_run['extra']['cost'] is not None and fit_run['extra']['model_version'] == 1

    git(repo, 'add', '-A'); git(repo, 'commit', '-qm', 'baseline')
    dvc(repo, 'exp', 'run', '-S', 'train.lr=0.01')  # a second model: registered, then promoted only if it beats the first
    assert [r['params']['lr'] for r in query(sa.select(runs.c.params).where(runs.c.name == 'flights-delay').order_by(runs.c.started_at))] == [0.001, 0.01]
    stages = {m['version']: m['stage'] for m in query('SELECT version, stage FROM models')}
    assert sorted(stages) == [1, 2] and list(stages.values()).count('production') == 1
    shown = dvc(repo, 'exp', 'show', '--json')  # the experiment, with its parameter and metrics, next to the baseline
    assert '"lr": 0.01' in shown and '"lr": 0.001' in shown and '"auc"' in shown
