"""The reference pipeline under real DVC, in a throwaway copy of the repository."""
import hashlib, json, os, shutil, subprocess, sys, textwrap
from pathlib import Path

import httpx
import polars as pl
import pytest
import sqlalchemy as sa

from aiinfra_nb.data import io
from aiinfra_nb.ops.store import query, runs
from aiinfra_nb.models.registry import Registry
from conftest import ROOT, copy_repo

BIN = Path(sys.executable).parent


pytestmark = pytest.mark.xdist_group('pipeline')  # one process reproduces the pipeline once; its tests start from copies


def make_repo(dst: Path, scratch: Path) -> Path:
    "A git repository holding a copy of the project, with the pipeline cut to a two-day sample"
    r = copy_repo(dst)
    (r/'dvc.lock').unlink(missing_ok=True)
    params = (r/'params.yaml').read_text().replace('sample_days: 0', 'sample_days: 2')
    (r/'params.yaml').write_text(params)
    os.environ.update(PATH=f"{BIN}:{os.environ['PATH']}", DVC_NO_ANALYTICS='1', DVC_SITE_CACHE_DIR=str(scratch/'dvc-site'),
                      GIT_AUTHOR_NAME='t', GIT_AUTHOR_EMAIL='t@t', GIT_COMMITTER_NAME='t', GIT_COMMITTER_EMAIL='t@t')
    git(r, 'init', '-q'); git(r, 'add', '-A'); git(r, 'commit', '-qm', 'copy')
    return r


@pytest.fixture(scope='session')
def reproduced(tmp_path_factory):
    "The project's pipeline run once by `dvc repro`, with the store that recorded it: the tests below start from copies of both"
    base = tmp_path_factory.mktemp('reproduced')
    r = make_repo(base/'repo', base)
    dvc(r, 'repro', env={'AIINFRA_HOME': str(base/'aiinfra-home')})
    return r, base/'aiinfra-home'


@pytest.fixture
def repo_reproduced(reproduced, tmp_path, aiinfra_home):
    "A copy of the reproduced repository (its DVC cache, lock and outputs), and its store as this test's store"
    r, home = reproduced
    shutil.copytree(home, aiinfra_home)
    return shutil.copytree(r, tmp_path/'repo', symlinks=True)


def git(repo, *args): return subprocess.run(['git', *args], cwd=repo, check=True, capture_output=True, text=True)


def dvc(repo, *args, env: dict | None = None) -> str:
    p = subprocess.run([str(BIN/'dvc'), *args], cwd=repo, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr


STAGES = ('ingest', 'etl', 'train', 'evaluate')


def stage_runs() -> list[tuple]:
    "(stage, status, threshold) of each pipeline notebook run, in order"
    return [(r['name'], r['status'], r['params'].get('threshold')) for r in
            query(sa.select(runs.c.name, runs.c.status, runs.c.params).where(runs.c.name.in_(STAGES)).order_by(runs.c.started_at))]


def test_repro_records_runs_and_reruns_only_what_changed(repo_reproduced):
    repo = repo_reproduced  # `dvc repro` ran once: its four stages are recorded
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


def test_train_stage_registers_evaluates_and_promotes(repo_reproduced):
    repo = repo_reproduced
    models = query(sa.select(sa.text('name, version, stage, metrics')).select_from(sa.table('models')))
    assert [(m['name'], m['version'], m['stage']) for m in models] == [('flights-delay', 1, 'production')]
    metrics = json.loads((repo/'data/eval/metrics.json').read_text())
    assert 0 < metrics['auc'] <= 1 and metrics['rows'] > 100
    assert 'fpr,tpr,threshold' in (repo/'data/eval/roc.csv').read_text().splitlines()[0]
    assert 'auc' in dvc(repo, 'metrics', 'show')
    fit_run = query(sa.select(runs).where(runs.c.name == 'flights-delay'))[0]  # the training run of `fit`, with its cost
    assert fit_run['status'] == 'finished' and fit_run['extra']['cost'] is not None and fit_run['extra']['model_version'] == 1
    stage_run = query(sa.select(runs).where(runs.c.name == 'train'))[0]  # ...inside the train stage's notebook run
    assert fit_run['parent_id'] == stage_run['id'] and stage_run['extra']['notebook'] == 'nbs/pipelines/train.ipynb'
    assert len(query(sa.select(runs.c.id).where(runs.c.kind == 'train'))) == 2  # one stage run, one training run: a tree

    git(repo, 'add', '-A'); git(repo, 'commit', '-qm', 'baseline')
    dvc(repo, 'exp', 'run', '-S', 'train.lr=0.01')  # a second model: registered, then promoted only if it beats the first
    assert [r['params']['lr'] for r in query(sa.select(runs.c.params).where(runs.c.name == 'flights-delay').order_by(runs.c.started_at))] == [0.001, 0.01]
    stages = {m['version']: m['stage'] for m in query('SELECT version, stage FROM models')}
    assert sorted(stages) == [1, 2] and list(stages.values()).count('production') == 1
    shown = dvc(repo, 'exp', 'show', '--json')  # the experiment, with its parameter and metrics, next to the baseline
    assert '"lr": 0.01' in shown and '"lr": 0.001' in shown and '"auc"' in shown


def lock_entry(repo, stage) -> dict:
    import yaml
    return yaml.safe_load((repo/'dvc.lock').read_text())['stages'][stage]


def test_rerun_on_identical_inputs_keeps_outputs_so_downstream_is_skipped(repo_reproduced):
    "Forcing the ingest stage to rerun on the same inputs gives the same bytes: DVC skips etl and everything after it"
    repo = repo_reproduced
    before = {s: lock_entry(repo, s) for s in STAGES}
    out = dvc(repo, 'repro', '-f', '-s', 'ingest')
    assert "Running stage 'ingest'" in out
    assert lock_entry(repo, 'ingest') == before['ingest']
    out = dvc(repo, 'repro')
    assert all(f"Stage '{s}' didn't change" in out for s in STAGES), out
    assert {s: lock_entry(repo, s) for s in STAGES} == before


def test_readme_fit_after_the_pipeline_trains_and_never_registers_an_untrained_version(repo_reproduced):
    "After the pipeline, the README's fit(...) trains anew (the pipeline's checkpoint is a finished run's); resuming a done run registers nothing"
    repo = repo_reproduced
    snippet = textwrap.dedent("""
        from aiinfra_nb.train.datamodule import TabularDataModule
        from aiinfra_nb.train.fit import fit
        result = fit(TabularDataModule('processed/features', 'delayed', split='time'), name='flights-delay', max_epochs=3)
        print('RESULT', result.trained, result.model_version, result.run_id)
        again = fit(TabularDataModule('processed/features', 'delayed', split='time'), name='flights-delay', max_epochs=3, resume=result.run_id,
                    progress=False)
        print('AGAIN', again.trained, again.model_version, again.note)
    """)
    p = subprocess.run([sys.executable, '-c', snippet], cwd=repo, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = {l.split()[0]: l.split(None, 3)[1:] for l in p.stdout.splitlines() if l.startswith(('RESULT', 'AGAIN'))}
    assert lines['RESULT'][:2] == ['True', '2']  # trained, registered as version 2 (the pipeline's is 1)
    assert lines['AGAIN'][:2] == ['False', 'None'] and 'nothing left to train' in lines['AGAIN'][2]
    versions = query("SELECT version, metrics FROM models WHERE name = 'flights-delay' ORDER BY version")
    assert [v['version'] for v in versions] == [1, 2] and all(json.loads(v['metrics']) if isinstance(v['metrics'], str) else v['metrics'] for v in versions)


def test_train_notebook_defaults_leave_the_shared_registry_untouched(tmp_path):
    "The pipeline notebooks' try-it defaults register into a scratch registry, never the shared one; evaluate's defaults find it"
    env = {**os.environ, 'TMPDIR': str(tmp_path)}
    for nb in ('train', 'evaluate'):
        p = subprocess.run([str(BIN/'papermill'), '-k', 'python3', '--engine', 'aiinfra', '--log-level', 'WARNING', '--no-progress-bar',
                            str(ROOT/f'nbs/pipelines/{nb}.ipynb'), str(tmp_path/f'{nb}.out.ipynb')],
                           cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert p.returncode == 0, p.stderr[-3000:]
        assert 'without encryption' not in p.stderr and 'Tip:' not in p.stderr + p.stdout
    assert query('SELECT count(*) AS n FROM models') == [{'n': 0}]
    assert [r['status'] for r in query("SELECT status FROM runs WHERE name IN ('train', 'evaluate', 'flights-delay')")] == ['finished'] * 3
    scratch = Registry.scratch(tmp_path/f'aiinfra-scratch-{os.getuid()}/pipeline/models')
    assert [(r['version'], r['stage']) for r in scratch.list('flights-delay')][0][1] == 'production'


def test_an_answer_carries_its_lineage_and_traces_back_to_data_code_and_promoter(repo_reproduced):
    """The flights model as the pipeline made it, served: V1 and V2 answers name the version, data and commit the registry holds;
    `aiinfra trace` of one names its training run, the datasets by the files' SHA-256 and the runs that wrote them, the commit and
    the evaluation that promoted it; the card the evaluate stage made renders in headless Chromium"""
    from test_browser import open_local_page
    from test_scaffold import in_project, serving
    repo = repo_reproduced
    lineage = Registry(repo/'data/models', project='aiinfra_nb').lineage('flights-delay', 1)
    key = json.loads(in_project([BIN/'aiinfra', 'keys', 'create', '--name', 'auditor', '--role', 'predict', '--json'], repo).stdout)['secret']
    auth = {'Authorization': f'Bearer {key}'}
    with serving(repo) as base:
        meta = httpx.get(f'{base}/v2/models/flights-delay', headers=auth).json()
        rows = pl.read_parquet(repo/'data/processed/features.parquet').drop_nulls([i['name'] for i in meta['inputs']]).head(2)
        v1 = httpx.post(f'{base}/v1/models/flights-delay:predict', headers=auth, json={'instances': rows.select(i['name'] for i in meta['inputs']).to_dicts()})
        v2 = httpx.post(f'{base}/v2/models/flights-delay/infer', headers=auth, json={'inputs': [
            {'name': i['name'], 'datatype': i['datatype'], 'shape': [2], 'data': rows[i['name']].to_list()} for i in meta['inputs']]})
    assert v1.status_code == 200 and v2.status_code == 200, (v1.text, v2.text)
    stamp = {'x-model-name': 'flights-delay', 'x-model-version': '1', 'x-data-version': lineage['data_version'], 'x-code-revision': lineage['git_rev']}
    for r in (v1, v2): assert {k: r.headers.get(k) for k in stamp} == stamp, dict(r.headers)
    head = git(repo, 'rev-parse', 'HEAD').stdout.strip()
    assert lineage['git_rev'].split('+')[0] == head  # the commit the pipeline ran at
    assert (v2.json()['model_version'], v2.json()['parameters']) == \
           ('1', {'data_version': lineage['data_version'], 'code_revision': lineage['git_rev'], 'request_id': v2.headers['x-request-id']})

    t = json.loads(in_project([BIN/'aiinfra', 'trace', v1.headers['x-request-id'], '--json'], repo).stdout)
    assert (t['request']['key_name'], t['request']['status_code'], t['model']['version'], t['training']['id']) == ('auditor', 200, 1, lineage['run_id'])
    assert t['training']['name'] == 'flights-delay' and t['training']['params']['lr'] == 0.001 and t['training']['cost'] is not None
    assert len(t['asked']) == 2 and t['commit'] == lineage['git_rev']
    sha = lambda f: hashlib.sha256((repo/'data'/f).read_bytes()).hexdigest()
    (features,) = t['data']
    assert (features['name'], features['sha256'], features['written_by']['kind']) == ('processed/features', sha('processed/features.parquet'), 'etl')
    raw = {s['dataset']['name']: s['dataset'] for s in features['sources'] if 'dataset' in s}
    assert raw['raw/flights']['sha256'] == sha('raw/flights.parquet') and raw['raw/flights']['written_by']['kind'] == 'ingest'
    (promoted,) = t['promotions']
    assert promoted['to'] == 'production' and promoted['evaluation']['name'] == 'evaluate' and promoted['by'] == f"run {promoted['evaluation']['id']} (evaluate)"
    text = in_project([BIN/'aiinfra', 'trace', v1.headers['x-request-id']], repo).stdout
    assert f"sha256 {sha('processed/features.parquet')[:12]}" in text and lineage['git_rev'][:12] in text

    page = open_local_page(repo/'data/cards/flights-delay/v1.html', 'card-flights.png')  # the evaluate stage's card of the version it promoted
    assert page['errors'] == [] and page['charts'] == 2, page['errors']  # the training curves, the ROC curve
    for section in ('Intended use and owner', 'Data', 'Features', 'Training', 'Evaluation', 'Drift and live performance since', 'Lineage'):
        assert section in page['text'], section
    assert 'processed/features' in page['text'] and 'auc' in page['text'] and 'No monitoring data for this version yet' in page['text']
