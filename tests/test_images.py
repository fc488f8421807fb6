"""Service images for real: a project made by `aiinfra new` is trained, built into an image with buildah, pushed to a
docker-registry started on 127.0.0.1, found in its catalog, and run (its own entry point, under `buildah run`) until it
answers on 127.0.0.1 with the model version it was built with; a promotion and a code change rebuild only their layers,
as the build records in the store say; bad input is one clear error and never leaves a tag half-pushed."""
import json, os, shutil, socket, subprocess, sys, threading, time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from aiinfra_nb.data.sources import package_file
from aiinfra_nb.ops.store import get_engine, models, query, runs
from test_scaffold import BIN, aiinfra, in_project
from test_serve import free_port

pytestmark = [pytest.mark.skipif(not all(map(shutil.which, ('buildah', 'skopeo', 'docker-registry', 'debootstrap'))),
                                 reason="buildah, skopeo, docker-registry or debootstrap missing: `make test` installs them when root"),
              pytest.mark.images, pytest.mark.xdist_group('images')]  # one container storage: these and the images tutorial run one after another
NAME = 'peng'


def builds(engine, project=NAME) -> list[dict]:
    "The build records in the store, oldest first: their layers (name -> reused)"
    rows = query(sa.select(runs.c.output, runs.c.status, runs.c.extra).where((runs.c.kind == 'image-build') & (runs.c.project == project))
                 .order_by(runs.c.started_at), engine)
    return [{**r, 'reused': {l['layer']: l['reused'] for l in (r['extra'] or {}).get('layers', [])}} for r in rows]


def promote_a_new_version(proj: Path) -> int:
    "A second version of the model (the first, nudged), saved and promoted in the project as its evaluate stage would"
    code = f"""
import torch
from aiinfra_nb.models.registry import Registry
r = Registry(); model, meta = r.load({NAME!r}, stage='production')
with torch.no_grad():
    for p in model.parameters(): p.add_(0.01)
v = r.save(model, {NAME!r}, features=meta['features'], preprocessing=meta['preprocessing'], data_version=meta['data_version'])['version']
r.promote({NAME!r}, v); print(v)
"""
    return int(in_project([sys.executable, '-c', code], proj).stdout.strip())


def wait_ready(base: str, proc, seconds=180):
    for _ in range(seconds * 10):
        try:
            if httpx.get(f'{base}/v2/health/ready', timeout=1).status_code == 200: return
        except httpx.HTTPError: pass
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    raise AssertionError('the image never became ready')


@pytest.fixture
def project(pg_url, tmp_path, monkeypatch):
    "A trained project whose central store is the real PostgreSQL server (a container reaches it on 127.0.0.1)"
    monkeypatch.setenv('AIINFRA_DB_URL', pg_url)
    proj = tmp_path/NAME
    aiinfra('new', NAME, '--data', package_file('palmerpenguins', 'data/penguins.csv'), '--target', 'species', '--dir', proj)
    in_project(['dvc', 'repro'], proj)
    return proj


def test_build_push_run_and_rebuild_only_what_changed(project, pg_url, tmp_path):
    from aiinfra_nb.images.tools import inspect_image
    from aiinfra_nb.images.registry import run_image, start_registry, stop_registry
    engine = get_engine(pg_url)
    first = json.loads(in_project([BIN/'aiinfra', 'image', 'build', '--json'], project).stdout)
    image = first['image']
    assert image.startswith(f'localhost/aiinfra/{NAME}:{NAME}-v1-') and first['models'] == [f'{NAME}:1']
    assert [l['layer'] for l in first['layers']][-4:] == ['lock', 'dependencies', 'code', 'model']

    again = json.loads(in_project([BIN/'aiinfra', 'image', 'build', '--json'], project).stdout)
    assert all(l['reused'] for l in again['layers']), again['layers']  # nothing changed: every layer reused

    config = inspect_image(image)['Docker']['config']
    rev = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=project, capture_output=True, text=True).stdout.strip()
    labels = config['Labels']
    assert (labels['io.aiinfra.project'], labels['io.aiinfra.model.name'], labels['io.aiinfra.model.version']) == (NAME, NAME, '1')
    assert labels['org.opencontainers.image.revision'].split('+')[0] == rev
    data_version = query(sa.select(models.c.data_version).where((models.c.project == NAME) & (models.c.version == 1)), engine)[0]['data_version']
    assert labels['io.aiinfra.data.version'] == data_version and data_version
    assert config['User'] == '10001:10001' and '/v2/health/ready' in ' '.join(config['Healthcheck']['Test'])
    assert {'AIINFRA_SERVICE_HOST=0.0.0.0', 'AIINFRA_SERVICE_PORT=8000'} <= set(config['Env'])
    lock = (Path(os.environ['AIINFRA_HOME'])/'images/context'/NAME/'requirements.lock').read_text().lower()
    assert 'torch==' in lock and not any(f'\n{d}==' in lock for d in ('jupyterlab', 'dvc', 'pytorch-lightning', 'papermill'))

    r = in_project([BIN/'aiinfra', 'image', 'build', '--tag', ''], project, check=False)  # an empty tag is a bad tag, not the default one
    assert r.returncode == 1 and "tag ''" in r.stderr and r.stderr.count('\n') == 1, r.stderr
    with socket.create_server(('127.0.0.1', 0)) as taken:  # another program's port: no registry is claimed there
        r = in_project([BIN/'aiinfra', 'registry', 'start', '--port', str(taken.getsockname()[1])], project, check=False)
        assert r.returncode == 1 and 'is taken by another program' in r.stderr, r.stderr

    # push to a registry on 127.0.0.1; the catalog lists it
    registry = start_registry(free_port(), tmp_path/'registry')['address']
    try:
        pushed = json.loads(in_project([BIN/'aiinfra', 'image', 'push', '--registry', registry, '--json'], project).stdout)
        tag = image.rsplit(':', 1)[1]
        assert pushed['destination'] == f'{registry}/aiinfra/{NAME}:{tag}'
        catalog = json.loads(in_project([BIN/'aiinfra', 'images', '--catalog', '--registry', registry, '--json'], project).stdout)
        assert [(c['repository'], c['tag']) for c in catalog] == [(f'aiinfra/{NAME}', tag)]
        listed = json.loads(in_project([BIN/'aiinfra', 'images', '--json'], project).stdout)
        assert listed[0]['image'] == image and listed[0]['pushed'] == pushed['destination']
    finally: stop_registry()

    # the image's own entry point answers on 127.0.0.1 with the version it carries, as the non-root user
    key = json.loads(in_project([BIN/'aiinfra', 'keys', 'create', '--name', 'image-test', '--role', 'read', '--json'], project).stdout)['secret']
    port = free_port()
    with run_image(image, env={'AIINFRA_SERVICE_HOST': '127.0.0.1', 'AIINFRA_SERVICE_PORT': str(port), 'AIINFRA_DB_URL': pg_url}) as proc:
        base = f'http://127.0.0.1:{port}'
        wait_ready(base, proc)
        auth = {'Authorization': f'Bearer {key}'}
        assert httpx.get(f'{base}/v2/models/{NAME}/versions/1/ready', headers=auth).json() == {'name': NAME, 'ready': True}
        assert httpx.get(f'{base}/v1/models/{NAME}', headers=auth).json()['version'] == '1'
        users = subprocess.run(['ps', '-o', 'uid=,args=', '-e'], capture_output=True, text=True).stdout.splitlines()
        assert any(u.split()[0] == '10001' and 'aiinfra serve' in u for u in users), users

    # a promotion rebuilds the model layer only; a code change the code and model layers only (from the build records)
    assert promote_a_new_version(project) == 2
    second = json.loads(in_project([BIN/'aiinfra', 'image', 'build', '--json'], project).stdout)
    assert second['models'] == [f'{NAME}:2'] and second['image'] != image
    settings = project/'settings.ini'
    settings.write_text(settings.read_text() + "\n[service]\nmax_rows = 5000\n")
    third = json.loads(in_project([BIN/'aiinfra', 'image', 'build', '--json'], project).stdout)
    recorded = builds(engine)
    assert [b['status'] for b in recorded] == ['finished'] * 4
    assert {k for k, v in recorded[2]['reused'].items() if not v} == {'model'}, recorded[2]['reused']
    assert {k for k, v in recorded[3]['reused'].items() if not v} == {'code', 'model'}, recorded[3]['reused']
    assert [l['digest'] for l in third['layers'][:-2]] == [l['digest'] for l in first['layers'][:-2]]

    # bad input: no production model, one line, nothing built
    in_project([sys.executable, '-c', f"from aiinfra_nb.models.registry import Registry; Registry().promote({NAME!r}, 2, 'archived')"], project)
    r = in_project([BIN/'aiinfra', 'image', 'build'], project, check=False)
    assert r.returncode == 1 and r.stderr.strip().startswith(f"aiinfra: error: project {NAME!r} has no production model") and 'Traceback' not in r.stderr
    assert len(builds(engine)) == 4


def test_a_pipeline_image_runs_a_scheduled_run_from_a_clone(tmp_path, pg_url, monkeypatch):
    """The image a Kubernetes or Docker work pool runs (`aiinfra image build --pipeline`): inside it, a scheduled run clones the project
    from a git server, reproduces it with its DVC remote's data, trains, pushes back, and lands in the store"""
    from aiinfra_nb.images.tools import inspect_image, tool, tool_env
    monkeypatch.setenv('AIINFRA_DB_URL', pg_url)
    proj, bucket, served = tmp_path/'pods', tmp_path/'bucket', tmp_path/'git'
    aiinfra('new', 'pods', '--data', package_file('palmerpenguins', 'data/penguins.csv'), '--target', 'species', '--dir', proj)
    bucket.mkdir()
    in_project(['dvc', 'remote', 'add', '-q', '-d', 'bucket', bucket], proj)  # in the committed .dvc/config, as a cluster needs it
    in_project(['dvc', 'push', '-q'], proj)
    subprocess.run(['chmod', '-R', 'a+rwX', bucket], check=True)  # the container's user (uid 10001) writes there too
    git = lambda *a: subprocess.run(['git', '-C', str(proj), '-c', 'user.name=t', '-c', 'user.email=t@t', *a], check=True, capture_output=True)
    git('add', '-A'); git('commit', '-qm', 'a DVC remote')
    served.mkdir(); subprocess.run(['git', 'clone', '-q', '--bare', str(proj), str(served/'pods.git')], check=True)
    port = free_port()  # a git server on 127.0.0.1, which the container shares
    daemon = subprocess.Popen(['git', 'daemon', '--reuseaddr', f'--base-path={served}', '--export-all', '--listen=127.0.0.1', f'--port={port}', str(served)])
    try:
        built = json.loads(in_project([BIN/'aiinfra', 'image', 'build', '--pipeline', '--json'], proj).stdout)
        assert built['image'].startswith('localhost/aiinfra/pods-pipeline:') and built['pipeline'] and built['models'] == []
        assert [l['layer'] for l in built['layers']][-3:] == ['lock', 'dependencies', 'code']
        config = inspect_image(built['image'])['Docker']['config']
        assert (config['User'], config.get('Entrypoint') or None, config['Cmd'], config['Labels']['io.aiinfra.image']) == \
               ('10001:10001', None, ['prefect', 'flow-run', 'execute'], 'pipeline')  # no entry point: the worker gives the command
        container = tool('buildah', 'from', '--pull-never', built['image']).strip()
        try:
            code = (f"import json; from aiinfra_nb.orchestrate.runs import scheduled_run; "
                    f"print(json.dumps(scheduled_run(repo='git://127.0.0.1:{port}/pods.git', schedule='in-the-image')))")
            ran = subprocess.run(['buildah', 'run', '-v', f'{bucket}:{bucket}', '--env', f'AIINFRA_DB_URL={pg_url}', container, '--', 'python', '-c', code],
                                 capture_output=True, text=True, env=tool_env(), timeout=600)
        finally: subprocess.run(['buildah', 'rm', container], capture_output=True, env=tool_env())
    finally: daemon.terminate(); daemon.wait(10)
    assert ran.returncode == 0 and json.loads(ran.stdout.splitlines()[-1])['status'] == 'finished', ran.stderr[-3000:]
    engine = get_engine(pg_url)
    (run,) = query(sa.select(runs.c.id, runs.c.status, runs.c.extra).where(runs.c.kind == 'schedule'), engine)
    assert run['extra']['repo'] == f'git://127.0.0.1:{port}/pods.git' and run['extra']['models'] == ['pods/1'], run
    stages = query(sa.select(runs.c.kind, runs.c.status).where(runs.c.parent_id == run['id']), engine)
    assert {s['kind'] for s in stages} >= {'ingest', 'etl', 'train', 'evaluate'} and {s['status'] for s in stages} == {'finished'}, stages
    assert query(sa.select(models.c.name, models.c.version, models.c.stage), engine) == [dict(name='pods', version=1, stage='production')]
    import yaml  # the registry the run made is in the remote, under the hash its dvc.lock (kept with the run) names
    (registry,) = [o['md5'] for o in yaml.safe_load(run['extra']['dvc_lock'])['stages']['train']['outs'] if o['path'] == 'data/models']
    assert (bucket/'files/md5'/registry[:2]/registry[2:]).is_file(), registry


def test_bad_input_is_one_clear_error(tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv('AIINFRA_DB_URL', sqlite_url)
    (tmp_path/'plain').mkdir()
    r = in_project([BIN/'aiinfra', 'image', 'build', '--project', tmp_path/'plain'], tmp_path, check=False)
    assert r.returncode == 1 and 'is not an aiinfra project (no settings.ini)' in r.stderr and 'Traceback' not in r.stderr
    aiinfra('new', 'untrained', '--data', package_file('palmerpenguins', 'data/penguins.csv'), '--target', 'species', '--dir', tmp_path/'untrained')
    r = in_project([BIN/'aiinfra', 'image', 'build'], tmp_path/'untrained', check=False)
    assert r.returncode == 1 and "project 'untrained' has no service to build: its registry holds no model" in r.stderr
    r = in_project([BIN/'aiinfra', 'image', 'push', 'localhost/aiinfra/untrained:x'], tmp_path/'untrained', check=False)
    assert r.returncode == 1 and 'no image localhost/aiinfra/untrained:x here' in r.stderr
    r = in_project([BIN/'aiinfra', 'image', 'build', '--tag', 'Not A Tag'], tmp_path/'untrained', check=False)
    assert r.returncode == 1 and 'Traceback' not in r.stderr


class CuttingProxy:
    "A TCP proxy to the registry that cuts every connection after `limit` bytes sent to it: a push dying halfway"
    def __init__(self, upstream: int, limit: int):
        self.upstream, self.limit, self.port = upstream, limit, free_port()
        self.server = socket.create_server(('127.0.0.1', self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try: client, _ = self.server.accept()
            except OSError: return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client):
        up = socket.create_connection(('127.0.0.1', self.upstream))
        def back():
            try:
                while data := up.recv(65536): client.sendall(data)
            except OSError: pass
            finally: client.close()
        threading.Thread(target=back, daemon=True).start()
        sent = 0
        try:
            while (data := client.recv(65536)) and sent < self.limit:
                up.sendall(data); sent += len(data)
        except OSError: pass
        finally: up.close(); client.close()


def test_a_push_cut_off_or_unreachable_leaves_no_tag(tmp_path, sqlite_url, monkeypatch):
    "Uses the newest image already built here (the test above builds one); the registry stays empty of tags"
    from aiinfra_nb.images.tools import ImageError, image_exists
    from aiinfra_nb.images.registry import push_image, registry_catalog, start_registry, stop_registry
    monkeypatch.setenv('AIINFRA_DB_URL', sqlite_url)
    listed = subprocess.run(['buildah', 'images', '--format', '{{.Name}}:{{.Tag}}', '--filter', 'reference=localhost/aiinfra/*'],
                            capture_output=True, text=True).stdout.split()
    images = [i for i in listed if not i.startswith(('localhost/aiinfra/base:', 'localhost/aiinfra/base-pipeline:')) and image_exists(i)]
    if not images: pytest.skip('no service image built here yet')
    with pytest.raises(ImageError, match=r'the image registry 127\.0\.0\.1:\d+ does not answer'):
        push_image(images[0], f'127.0.0.1:{free_port()}')
    registry = start_registry(free_port(), tmp_path/'registry')['address']
    try:
        proxy = CuttingProxy(int(registry.rsplit(':', 1)[1]), limit=20_000_000)
        with pytest.raises(ImageError, match='skopeo copy'):
            push_image(images[0], f'127.0.0.1:{proxy.port}')
        assert [r for r in registry_catalog(registry) if r['tag']] == []  # layers may be there; no tag names them
        failed = query(sa.select(runs.c.status).where(runs.c.kind == 'image-push'), get_engine(sqlite_url))
        assert [r['status'] for r in failed] == ['failed']
    finally: stop_registry()
