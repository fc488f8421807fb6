"""`aiinfra new` as a new user runs it: three public tables shipped in packages become projects that run `dvc repro` and
answer an authenticated prediction, against the central store on SQLite and PostgreSQL; bad input creates nothing; the
notebook-stage check; an upgrade from the previous template version keeps a local edit."""
import contextlib, json, os, shutil, subprocess, sys, time
from pathlib import Path

import httpx
import polars as pl
import pytest
import sqlalchemy as sa

from aiinfra_nb.data.sources import package_file
from aiinfra_nb.ops.store import audit, get_engine, machine_sessions, models, projects, query, runs, services
from conftest import ROOT, copy_repo
from test_browser import open_local_page
from test_serve import free_port

BIN = Path(sys.executable).parent
DATASETS = {  # task -> (package, file, target): nulls in features (all), a date and free text (binary), a date (regression)
    'binary': ('palmerpenguins', 'data/penguins-raw.csv', 'Clutch Completion'),
    'multiclass': ('palmerpenguins', 'data/penguins.csv', 'species'),
    'regression': ('vega_datasets', '_data/seattle-weather.csv', 'temp_max'),
}
PRIMARY = {'binary': 'auc', 'multiclass': 'macro_f1', 'regression': 'rmse'}


def aiinfra(*args, cwd=None, env=None, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN/'aiinfra'), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, 'PATH': f"{BIN}:{os.environ['PATH']}", 'DVC_NO_ANALYTICS': '1', **(env or {})})
    if check: assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    return r


def in_project(cmd: list, proj: Path, check=True) -> subprocess.CompletedProcess:
    "A command run in the project as its user would: no AIINFRA_DB_URL, so the project's settings.ini names the store"
    env = {k: v for k, v in os.environ.items() if k != 'AIINFRA_DB_URL'}
    r = subprocess.run(cmd, cwd=proj, capture_output=True, text=True, timeout=900,
                       env={**env, 'PATH': f"{BIN}:{env['PATH']}", 'DVC_NO_ANALYTICS': '1'})
    if check: assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    return r


@contextlib.contextmanager
def serving(proj: Path, env: dict | None = None):
    "`aiinfra serve` started in the project on a free port: its base URL once it is ready; stopped after"
    port = free_port()
    proc = subprocess.Popen([str(BIN/'aiinfra'), 'serve', '--port', str(port)], cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f'http://127.0.0.1:{port}'
    try:
        for _ in range(600):
            try:
                if httpx.get(f'{base}/v2/health/ready', timeout=1).status_code == 200: break
            except httpx.HTTPError: pass
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate(); proc.communicate(timeout=60)


def predict(proj: Path, name: str) -> dict:
    "An authenticated V2 prediction from `aiinfra serve` started in the project, on two rows of its features"
    key = json.loads(in_project([str(BIN/'aiinfra'), 'keys', 'create', '--name', 'tester', '--role', 'predict', '--json'], proj).stdout)
    with serving(proj, {k: v for k, v in os.environ.items() if k != 'AIINFRA_DB_URL'}) as base:
        meta = httpx.get(f'{base}/v2/models/{name}', headers={'Authorization': f"Bearer {key['secret']}"}).json()
        frame = pl.read_parquet(proj/'data/processed/features.parquet').drop_nulls([i['name'] for i in meta['inputs']]).head(2)
        body = {'inputs': [{'name': i['name'], 'datatype': i['datatype'], 'shape': [2], 'data': frame[i['name']].to_list()} for i in meta['inputs']]}
        r = httpx.post(f'{base}/v2/models/{name}/infer', json=body, headers={'Authorization': f"Bearer {key['secret']}"})
        assert r.status_code == 200, r.text
        assert httpx.post(f'{base}/v2/models/{name}/infer', json=body).status_code == 401  # no key, no answer
        return r.json()


STORE = {'binary': 'pg_url', 'multiclass': 'sqlite_url', 'regression': 'pg_url'}  # each task once, both stores among them (tests/test_store: both, always)
SECTIONS = ('Intended use and owner', 'Data', 'Features', 'Training', 'Evaluation', 'Drift and live performance since', 'Lineage')


@pytest.mark.e2e
@pytest.mark.parametrize('task', DATASETS)
def test_new_project_runs_end_to_end_and_serves(task, request, tmp_path, monkeypatch):
    package, file, target = DATASETS[task]
    store_url = request.getfixturevalue(STORE[task])
    name = f'demo-{task}'
    monkeypatch.setenv('AIINFRA_DB_URL', store_url)
    made = aiinfra('new', name, '--data', package_file(package, file), '--target', target, '--dir', tmp_path/name)
    assert f"target {target!r}: {task}" in made.stdout and 'review contracts/' in made.stdout
    proj = tmp_path/name
    assert f'url = {store_url}' in (proj/'settings.ini').read_text()  # the central store, written into the project

    in_project(['dvc', 'repro'], proj)
    metrics = json.loads((proj/'data/eval/metrics.json').read_text())
    assert PRIMARY[task] in metrics and metrics['rows'] > 0
    card = open_local_page(proj/'data/cards'/name/'v1.html', f'card-{task}.png')  # the evaluate stage's card of the version it promoted
    assert card['errors'] == [] and card['charts'] == (1 if task == 'multiclass' else 2), card  # curves; and ROC, or residuals
    assert all(s in card['text'] for s in SECTIONS) and 'No monitoring data for this version yet' in card['text'] and 'no contract recorded' not in card['text']
    assert {'binary': 'auc', 'multiclass': 'Chinstrap', 'regression': 'rmse'}[task] in card['text']  # its figures, per class for the penguins
    in_project([str(BIN/'aiinfra'), 'stages', 'check'], proj)
    in_project([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'tests'], proj)  # the project's own tests

    answer = predict(proj, name)
    assert answer['model_name'] == name and len(answer['outputs'][0]['data']) == (6 if task == 'multiclass' else 2)

    engine = get_engine(store_url)
    kinds = {r['kind'] for r in query(sa.select(runs.c.kind).where(runs.c.project == name), engine)}
    assert kinds == {'ingest', 'etl', 'train', 'evaluate'}, kinds
    assert query(sa.select(models.c.version, models.c.stage).where((models.c.project == name) & (models.c.name == name)), engine) == [{'version': 1, 'stage': 'production'}]
    calls = query(sa.select(audit.c.project, audit.c.status_code).where(audit.c.path == f'/v2/models/{name}/infer'), engine)
    assert sorted(c['status_code'] for c in calls) == [200, 401] and {c['project'] for c in calls} == {name}
    assert query(sa.select(projects.c.repo).where(projects.c.name == name), engine) == [{'repo': str(proj)}]
    assert query(sa.select(machine_sessions.c.project).where(machine_sessions.c.project == name), engine)  # the training's machine-hours
    assert {r['project'] for r in query(sa.select(services.c.project).where(services.c.name == name), engine)} == {name}


def test_bad_input_creates_nothing(tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv('AIINFRA_DB_URL', sqlite_url)
    penguins = package_file('palmerpenguins', 'data/penguins.csv')
    (tmp_path/'empty.csv').write_text('')
    (tmp_path/'picture.csv').write_bytes(bytes(range(256)) * 8)
    (tmp_path/'one.csv').write_text('x,y\n1,a\n2,a\n3,a\n')
    (tmp_path/'taken').mkdir(); (tmp_path/'taken'/'notes.txt').write_text('mine')
    aiinfra('new', 'first', '--data', penguins, '--target', 'species', '--dir', tmp_path/'first')
    cases = [(['--data', penguins, '--target', 'wingspan'], "target column 'wingspan' is not in the table"),
             (['--data', tmp_path/'one.csv', '--target', 'y'], "has a single value ('a')"),
             (['--data', tmp_path/'empty.csv', '--target', 'y'], 'the file is empty'),
             (['--data', tmp_path/'picture.csv', '--target', 'y'], 'not a text file'),
             (['--data', penguins, '--target', 'species', '--dir', tmp_path/'taken'], 'is not an empty folder'),
             (['--data', penguins, '--target', 'species', '--template', tmp_path/'no-such-template'], 'could not be rendered')]
    for args, says in cases:
        r = aiinfra('new', 'second', *args, *([] if '--dir' in args else ['--dir', tmp_path/'second']), check=False)
        assert r.returncode == 1 and r.stderr.count('\n') == 1 and says in r.stderr, (args, r.stderr)
        assert not (tmp_path/'second').exists()
    r = aiinfra('new', 'first', '--data', penguins, '--target', 'species', '--dir', tmp_path/'again', check=False)
    assert r.returncode == 1 and "a project named 'first' exists already" in r.stderr and not (tmp_path/'again').exists()
    assert os.listdir(tmp_path/'taken') == ['notes.txt']
    assert [r['name'] for r in query(sa.select(projects.c.name), get_engine(sqlite_url))] == ['first']


def _add_parameter(notebook: Path, line: str):
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb['cells'] if 'parameters' in c['metadata'].get('tags', []))
    cell['source'] = [*cell['source'][:-1], cell['source'][-1].rstrip('\n') + '\n', line]
    notebook.write_text(json.dumps(nb, indent=1) + '\n')


def test_stages_check_catches_an_untracked_parameter_and_sync_fixes_it(tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv('AIINFRA_DB_URL', sqlite_url)
    aiinfra('new', 'weather', '--data', package_file('vega_datasets', '_data/seattle-weather.csv'), '--target', 'weather', '--dir', tmp_path/'weather')
    proj = tmp_path/'weather'
    _add_parameter(proj/'nbs/pipelines/etl.ipynb', 'min_rows = 10  # fewer rows than this stop the stage')
    r = in_project([str(BIN/'aiinfra'), 'stages', 'check'], proj, check=False)
    assert r.returncode == 1 and "parameter 'min_rows' is not passed by stage 'etl'" in r.stderr, r.stderr
    in_project([str(BIN/'aiinfra'), 'stages', 'sync'], proj)
    in_project([str(BIN/'aiinfra'), 'stages', 'check'], proj)
    assert '-p min_rows "${etl.min_rows}"' in (proj/'dvc.yaml').read_text() and 'min_rows: 10' in (proj/'params.yaml').read_text()


def test_this_repository_passes_the_stages_check():
    r = aiinfra('stages', 'check', cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr


def _git(cwd: Path, *args):
    subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@localhost', *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.e2e
def test_upgrade_from_the_previous_template_keeps_a_local_edit(tmp_path, sqlite_url, monkeypatch):
    "The template at v1 makes a project; the project edits a notebook; the template gains a training parameter (v2); the upgrade brings it and keeps the edit"
    monkeypatch.setenv('AIINFRA_DB_URL', sqlite_url)
    template = copy_repo(tmp_path/'toolkit')
    _git(template, 'init', '-q', '-b', 'main'); _git(template, 'add', '-A'); _git(template, 'commit', '-q', '-m', 'v1')
    aiinfra('new', 'birds', '--data', package_file('palmerpenguins', 'data/penguins.csv'), '--target', 'species',
            '--dir', tmp_path/'birds', '--template', template)
    proj = tmp_path/'birds'
    etl = proj/'nbs/pipelines/etl.ipynb'
    nb = json.loads(etl.read_text())
    nb['cells'].append({'cell_type': 'markdown', 'id': 'myedit01', 'metadata': {}, 'source': ['Our own note: island matters.']})
    etl.write_text(json.dumps(nb, indent=1) + '\n')
    _git(proj, 'commit', '-qam', 'our note')

    train = template/'template/nbs/pipelines'/"{% if data_kind == 'table' %}train.ipynb{% endif %}.jinja"
    text = train.read_text()
    text = text.replace('"seed = 0  # seeds the split, the initialisation and the batch order"',
                        '"seed = 0  # seeds the split, the initialisation and the batch order\\n",\n    "gradient_clip_val = 1.0  # clip gradients above this norm (Lightning)"')
    text = text.replace('strategy=strategy, precision=precision)', 'strategy=strategy, precision=precision, gradient_clip_val=gradient_clip_val)')
    assert 'gradient_clip_val=gradient_clip_val' in text and '"gradient_clip_val = 1.0' in text
    train.write_text(text)
    _git(template, 'commit', '-qam', 'v2: gradient clipping')

    r = aiinfra('upgrade', proj)
    assert 'conflict' not in r.stdout and 'params.yaml: train.gradient_clip_val = 1.0 added' in r.stdout, r.stdout
    assert 'Our own note: island matters.' in etl.read_text()  # the edit is kept
    assert 'gradient_clip_val=gradient_clip_val' in (proj/'nbs/pipelines/train.ipynb').read_text()
    in_project([str(BIN/'aiinfra'), 'stages', 'check'], proj)
    in_project(['dvc', 'repro'], proj)
    assert json.loads((proj/'data/eval/metrics.json').read_text())['rows'] > 0


def test_a_hostile_file_name_or_column_cannot_inject_code(tmp_path, sqlite_url, monkeypatch):
    """A 243-byte file name that closes the notebook's string and cell and opens a code cell is copied under a plain name, and the
    pipeline runs nothing of it; a column name that would run a command in the stage's shell command is refused"""
    monkeypatch.setenv('AIINFRA_DB_URL', sqlite_url)
    evil = 'x"]},{"cell_type":"code","execution_count":null,"metadata":{},"outputs":[],"source":["__import__(\\"os\\").system(\\"touch PWN\\")"]},{"cell_type":"markdown","metadata":{},"source":["y.csv'
    assert '/' not in evil and len(evil.encode()) < 255
    (tmp_path/'in').mkdir()
    shutil.copyfile(package_file('palmerpenguins', 'data/penguins.csv'), tmp_path/'in'/evil)
    aiinfra('new', 'hostile', '--data', tmp_path/'in'/evil, '--target', 'species', '--dir', tmp_path/'hostile')
    proj = tmp_path/'hostile'
    ingest = json.loads((proj/'nbs/pipelines/ingest.ipynb').read_text())
    import re
    template_ids = re.findall(r'"id": "(\w+)"', (ROOT/'template/nbs/pipelines'/"{% if data_kind == 'table' %}ingest.ipynb{% endif %}.jinja").read_text())
    assert [c['id'] for c in ingest['cells']] == template_ids  # the template's cells, and no other
    assert not any(''.join(c['source']).lstrip().startswith('__import__') for c in ingest['cells'])
    assert [p.name for p in (proj/'data/source').iterdir() if not p.name.endswith('.dvc') and p.name != '.gitignore'] == [
        ''.join(ch if ch.isalnum() or ch in '._-' else '_' for ch in evil).lstrip('.-')[-120:]]
    in_project([str(BIN/'aiinfra'), 'stages', 'check'], proj)
    in_project(['dvc', 'repro', 'ingest'], proj)
    assert not (proj/'PWN').exists() and not list(proj.rglob('PWN'))

    frame = pl.read_csv(package_file('palmerpenguins', 'data/penguins.csv')).rename({'species': '$(touch PWN)'})
    frame.write_csv(tmp_path/'cols.csv')
    r = aiinfra('new', 'columns', '--data', tmp_path/'cols.csv', '--target', '$(touch PWN)', '--dir', tmp_path/'columns', check=False)
    assert r.returncode == 1 and r.stderr.count('\n') == 1 and 'cannot go into a pipeline parameter' in r.stderr, r.stderr
    assert not (tmp_path/'columns').exists() and not list(tmp_path.rglob('PWN'))


@pytest.mark.e2e
def test_a_folder_of_images_becomes_a_project_that_trains_and_serves_images(tmp_path, sqlite_url, monkeypatch):
    "`aiinfra new --data FOLDER` on the digits (half labelled by a table, a few more in the notebook's labels): dvc repro, accuracy >= 0.9 on the held-out images, a card, V1 b64 and V2 answers"
    import base64
    from aiinfra_nb.data.imagesets import digits_folder
    from aiinfra_nb.data.io import Catalog
    from aiinfra_nb.data.labels import LabelStore
    from sklearn.datasets import load_digits
    target = load_digits().target  # the truth of image i (digits_folder writes images/{i:04d}.png)
    monkeypatch.setenv('AIINFRA_DB_URL', sqlite_url)
    folder = digits_folder(tmp_path/'digits', layout='table', labelled=1500)
    made = aiinfra('new', 'digits', '--data', folder, '--labels', folder/'labels.csv', '--dir', tmp_path/'digits-project')
    assert '1,797 images (8×8 (1,797)); 1,500 labelled in 10 classes: multiclass' in made.stdout and '297 images have no label' in made.stdout, made.stdout
    proj = tmp_path/'digits-project'
    assert (proj/'data/source/labels.csv').is_file() and not (proj/'data/source/digits/labels.csv').exists()
    store = LabelStore(Catalog(proj/'data'), 'raw/images')  # a person labels ten more in the notebook (the Labeller writes these rows)
    for i in range(1500, 1510): store.put(f'images/{i:04d}.png', str(target[i]), 'ana')
    in_project(['dvc', 'repro'], proj)
    labels = pl.read_parquet(proj/'data/processed/labels.parquet')
    assert labels['label'].drop_nulls().len() == 1510
    metrics = json.loads((proj/'data/eval/metrics.json').read_text())
    assert metrics['accuracy'] >= 0.9 and metrics['rows'] > 200, metrics
    confusion = pl.read_csv(proj/'data/eval/confusion.csv')
    assert confusion.height == 10 and confusion.drop('class').sum_horizontal().sum() == metrics['rows']
    card = open_local_page(proj/'data/cards/digits/v1.html', 'card-images.png')
    assert card['errors'] == [] and 'image (L)' in card['text'] and '8×8 pixels' in card['text'], card['text'][:2000]
    in_project([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'tests'], proj)  # the project's own tests
    key = json.loads(in_project([str(BIN/'aiinfra'), 'keys', 'create', '--name', 'tester', '--role', 'predict', '--json'], proj).stdout)['secret']
    test = pl.read_parquet(proj/'data/raw/images.parquet').filter(pl.col('split') == 'test').head(20)
    files = [(proj/'data/raw/images'/p).read_bytes() for p in test['path']]
    truth = [str(target[int(p[len('images/'):-len('.png')])]) for p in test['path']]
    with serving(proj, {k: v for k, v in os.environ.items() if k != 'AIINFRA_DB_URL'}) as base:
        auth = {'Authorization': f'Bearer {key}'}
        v1 = httpx.post(f'{base}/v1/models/digits:predict', json={'instances': [{'image': {'b64': base64.b64encode(f).decode()}} for f in files]}, headers=auth)
        assert v1.status_code == 200, v1.text
        said = [str(max(range(10), key=lambda k: p[k])) for p in v1.json()['predictions']]
        assert sum(a == b for a, b in zip(said, truth)) >= 16, (said, truth)
        v2 = httpx.post(f'{base}/v2/models/digits/infer', json={'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [1], 'data': [base64.b64encode(files[0]).decode()]}]}, headers=auth)
        assert v2.status_code == 200 and v2.json()['outputs'][0]['shape'] == [1, 10], v2.text
        bad = httpx.post(f'{base}/v1/models/digits:predict', json={'instances': [{'image': {'b64': base64.b64encode(b'not a png').decode()}}]}, headers=auth)
        assert bad.status_code == 422 and 'instance 0: not a PNG image' in bad.json()['error']  # the formats of its contract


def test_bad_image_folders_create_nothing(tmp_path, sqlite_url, monkeypatch):
    "A folder of images that breaks the contract, has one class, or is given a table's options: one line of error, nothing made"
    from aiinfra_nb.data.imagesets import digits_folder, png_bomb
    monkeypatch.setenv('AIINFRA_DB_URL', sqlite_url)
    broken = digits_folder(tmp_path/'broken', limit=30)
    (broken/'3'/'cut.png').write_bytes((broken/'0'/'0000.png').read_bytes()[:-20]); (broken/'3'/'notes.png').write_text('not a picture')
    png_bomb(broken/'4'/'huge.png')
    one = digits_folder(tmp_path/'one', limit=30)
    for d in one.iterdir():
        if d.name != '0': shutil.rmtree(d)
    penguins = package_file('palmerpenguins', 'data/penguins.csv')
    cases = [(['--data', broken], 'breaks image contract'), (['--data', broken], '1 unreadable or truncated, 1 not an image, 1 decompression bomb'),
             (['--data', one], "1 class(es) labelled (0): a classifier needs two"),
             (['--data', digits_folder(tmp_path/'ok', limit=30), '--target', 'species'], 'is a folder of images: it has no target column'),
             (['--data', penguins, '--target', 'species', '--labels', tmp_path/'x.csv'], '--labels names the labels of a folder of images'),
             (['--data', penguins], 'is a table: name the column to predict (--target)')]
    for args, says in cases:
        r = aiinfra('new', 'pictures', *args, '--dir', tmp_path/'pictures', check=False)
        assert r.returncode == 1 and r.stderr.count('\n') == 1 and says in r.stderr, (args, r.stderr)
        assert not (tmp_path/'pictures').exists()
    assert query(sa.select(projects.c.name), get_engine(sqlite_url)) == []
