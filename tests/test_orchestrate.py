"""The scheduler on a real Prefect server and worker (started here on a free port of 127.0.0.1, with a home of their own):
a scaffolded project on an interval runs, with its stage runs and its model; a failing pipeline is retried exactly N times;
two runs of one project never overlap; SIGTERM to the worker leaves the run interrupted and no worktree; a restart keeps
the schedules; Prefect's own CLI sees what `list_schedules` says."""
import os, signal, socket, subprocess, sys, time
from pathlib import Path

import pytest
import sqlalchemy as sa

from aiinfra_nb.core import Project
from aiinfra_nb.data.sources import package_file
from aiinfra_nb.ops.store import get_engine, models, query, runs, schedules
from aiinfra_nb.orchestrate.scheduler import (SchedulerError, add_schedule, api_url, client, list_schedules, pause_schedule, prefect_env, remove_schedule,
                                    run_schedule, scheduler_home, scheduler_status, start_scheduler, stop_scheduler)
from aiinfra_nb.scaffold import new_project

pytestmark = [pytest.mark.xdist_group('orchestrate'), pytest.mark.scheduler]  # one server and worker, the tests in order



def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def operator(tmp_path_factory):
    "The project whose settings name the scheduler: a Prefect server and worker of its own, stopped at the end"
    home = tmp_path_factory.mktemp('scheduler')
    project = Project.open(home, environ={'AIINFRA_HOME': str(home/'home'), 'AIINFRA_ORCHESTRATOR_PORT': str(free_port()),
                                          'AIINFRA_ORCHESTRATOR_RETRY_DELAY_S': '1'})
    start_scheduler(project)
    yield project
    stop_scheduler(project)


def repo(path: Path, dvc_yaml: str, store: str) -> Path:
    "A committed git + DVC repository with one dvc.yaml and its own store"
    path.mkdir(parents=True)
    (path/'settings.ini').write_text(f"[store]\nurl = sqlite:///{store}\n")
    (path/'dvc.yaml').write_text(dvc_yaml)
    git = lambda *a: subprocess.run(['git', '-C', str(path), *a], check=True, capture_output=True)
    git('init', '-q'); subprocess.run(['dvc', 'init', '-q'], cwd=path, check=True)
    git('add', '-A'); git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'first')
    return path


def schedule_runs(store: str, name: str | None = None) -> list[dict]:
    q = sa.select(runs.c.id, runs.c.name, runs.c.status, runs.c.error, runs.c.started_at, runs.c.ended_at, runs.c.extra).where(
        runs.c.kind == 'schedule').order_by(runs.c.started_at)
    return query(q.where(runs.c.name == name) if name else q, get_engine(f"sqlite:///{store}"))


def ended(store: str, n: int) -> list[dict] | None:
    "The schedule runs of `store` once there are `n`, all ended"
    got = schedule_runs(store)
    return got if len(got) == n and all(r['status'] != 'running' for r in got) else None


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline: raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(1)
    return got


def test_a_scaffolded_project_runs_on_its_schedule(operator, tmp_path, monkeypatch):
    store = tmp_path/'penguins.db'
    monkeypatch.setenv('AIINFRA_DB_URL', f"sqlite:///{store}")  # new_project writes it into the project's settings.ini
    made = new_project('penguins', package_file('palmerpenguins', 'data/penguins.csv'), 'species', dir=tmp_path/'penguins')
    monkeypatch.delenv('AIINFRA_DB_URL')
    root = Path(made.path)
    added = add_schedule(root, every='10s', project=operator)
    assert (added['name'], added['trigger'], added['pool']) == ('penguins', 'every 10s', 'aiinfra')
    done = wait_for(lambda: [r for r in schedule_runs(store) if r['status'] == 'finished'][1:], 420, 'two finished scheduled runs')
    pause_schedule('penguins', project=operator)
    first = schedule_runs(store)[0]
    assert first['status'] == 'finished', first
    assert first['extra']['trigger'] == 'schedule' and len(first['extra']['commit']) == 40 and 'train:' in first['extra']['dvc_lock']
    children = query(sa.select(runs.c.kind, runs.c.status).where(runs.c.parent_id == first['id']), get_engine(f"sqlite:///{store}"))
    assert {c['kind'] for c in children} >= {'ingest', 'etl', 'train', 'evaluate'} and {c['status'] for c in children} == {'finished'}, children
    model = query(sa.select(models.c.name, models.c.version, models.c.path), get_engine(f"sqlite:///{store}"))
    assert model and model[0]['name'] == 'penguins', model
    assert (root/'data/models/penguins'/str(model[0]['version'])/'model.safetensors').is_file()  # in the project's registry
    assert Path(model[0]['path']).resolve() == (root/'data/models/penguins'/str(model[0]['version'])).resolve()
    assert 'model card' in (root/'data/cards/penguins'/f"v{model[0]['version']}.html").read_text()  # the card the evaluate stage made, kept too
    assert done[0]['extra']['dvc_lock']  # the second run too kept its lock
    status = subprocess.run(['git', '-C', str(root), 'status', '--porcelain'], capture_output=True, text=True).stdout
    assert status in ('', '?? data/models/\n'), status  # the working copy as it was, but for the registry's new versions
    assert list((Path(operator.settings.store.home)/'worktrees').iterdir()) == []
    mirrored = query(sa.select(schedules.c.name, schedules.c.trigger, schedules.c.paused), get_engine(f"sqlite:///{store}"))
    assert mirrored == [dict(name='penguins', trigger='every 10s', paused=True)]  # readable in %%sql


def test_a_failing_pipeline_is_retried_exactly_n_times(operator, tmp_path):
    store = tmp_path/'broken.db'
    root = repo(tmp_path/'broken', 'stages:\n  load:\n    cmd: python -c "import sys; sys.exit(\'the source is empty\')"\n', store)
    add_schedule(root, cron='0 3 1 1 *', retries=2, project=operator)
    run_schedule('broken', project=operator)
    wait_for(lambda: ended(store, 3), 400, 'three tries')
    time.sleep(3)  # and no fourth
    tries = schedule_runs(store)
    assert [(t['status'], t['extra']['trigger']) for t in tries] == [('failed', 'manual'), ('failed', 'retry'), ('failed', 'retry')]
    assert all('the source is empty' in t['error'] for t in tries), tries
    last = wait_for(lambda: next((r for r in list_schedules(operator) if r['name'] == 'broken' and r['last_state'] == 'Failed'), None), 60,
                    'the flow run failed in Prefect')
    assert last['retries'] == 2


def test_two_runs_of_one_project_run_one_after_the_other(operator, tmp_path):
    store = tmp_path/'busy.db'
    root = repo(tmp_path/'busy', 'stages:\n  work:\n    cmd: python -c "import time; time.sleep(4)"\n', store)
    add_schedule(root, cron='0 3 1 1 *', project=operator)
    add_schedule(root, cron='0 4 1 1 *', name='busy-again', project=operator)  # another schedule of the same project
    run_schedule('busy', project=operator); run_schedule('busy-again', project=operator)
    both = wait_for(lambda: ended(store, 2), 400, 'both runs')
    assert [r['status'] for r in both] == ['finished', 'finished'], both
    assert both[1]['started_at'] >= both[0]['ended_at'], both  # never side by side


def test_sigterm_to_the_worker_interrupts_the_run(operator, tmp_path):
    store = tmp_path/'slow.db'
    root = repo(tmp_path/'slow', 'stages:\n  wait:\n    cmd: python -c "import time; time.sleep(120)"\n', store)
    add_schedule(root, cron='0 3 1 1 *', project=operator)
    run_schedule('slow', project=operator)
    wait_for(lambda: [r for r in schedule_runs(store) if r['status'] == 'running'], 120, 'the run started')
    time.sleep(4)  # dvc repro is running its stage
    worker = int((scheduler_home(operator.settings)/'worker.pid').read_text())
    os.kill(worker, signal.SIGTERM)
    (run,) = wait_for(lambda: [r for r in schedule_runs(store) if r['status'] != 'running'], 60, 'the run ended')
    assert (run['status'], run['error']) == ('interrupted', 'SIGTERM'), run
    assert list((Path(operator.settings.store.home)/'worktrees').iterdir()) == []
    assert 'time.sleep(120)' not in subprocess.run(['ps', '-eo', 'args'], capture_output=True, text=True).stdout  # its stage stopped too
    start_scheduler(operator)  # a worker again, for what follows


def test_a_restart_keeps_the_schedules_and_prefect_sees_them(operator):
    before = [r['name'] for r in list_schedules(operator)]
    assert {'penguins', 'broken', 'busy', 'busy-again', 'slow'} <= set(before), before
    assert stop_scheduler(operator) == dict(worker=True, server=True)
    assert scheduler_status(operator)['up'] is False
    with pytest.raises(SchedulerError, match='no scheduler answers at .*: start it with `aiinfra scheduler start`'): list_schedules(operator)
    st = start_scheduler(operator)
    assert st['up'] and st['worker_pid'] and [r['name'] for r in st['schedules']] == before
    listed = subprocess.run([str(Path(sys.executable).parent/'prefect'), 'deployment', 'ls'], capture_output=True, text=True,
                            env=prefect_env(operator.settings), timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert all(f"run_pipeline/{n}" in listed.stdout for n in before), listed.stdout  # Prefect's own client, the same schedules
    remove_schedule('slow', project=operator)
    assert 'slow' not in [r['name'] for r in list_schedules(operator)]


def test_the_cli_says_one_line_and_makes_nothing(operator, tmp_path):
    env = {**os.environ, 'AIINFRA_HOME': str(operator.settings.store.home), 'AIINFRA_ORCHESTRATOR_PORT': str(operator.settings.orchestrator.port)}
    cli = lambda *a, **kw: subprocess.run([str(Path(sys.executable).parent/'aiinfra'), *a], capture_output=True, text=True, env={**env, **kw}, timeout=120)
    root = repo(tmp_path/'ok', 'stages:\n  s:\n    cmd: "true"\n', tmp_path/'ok.db')
    cases = [(['schedule', 'add', str(tmp_path/'nowhere'), '--every', '1m'], 'no project folder'),
             (['schedule', 'add', str(tmp_path), '--every', '1m'], 'is not a git repository'),
             (['schedule', 'add', str(root), '--cron', 'at dawn'], "cron 'at dawn' is not a cron expression"),
             (['schedule', 'add', str(root), '--every', 'often'], "--every 'often': expected a number and a unit"),
             (['schedule', 'add', str(root), '--every', '1m', '--stages', 'train'], "no stage 'train'"),
             (['schedule', 'add', str(root)], 'exactly one trigger'),
             (['schedule', 'add', str(root), '--every', '1m', '--name', 'broken'], "a schedule named 'broken' exists"),
             (['schedule', 'run', 'nope'], "no schedule 'nope'"),
             (['schedule', 'add', str(root), '--every', '1m', '--pool', 'nope'], "no work pool 'nope'"),
             (['scheduler', 'pool', 'ecs', 'x'], "pool type 'ecs': one of kubernetes, docker"),
             (['scheduler', 'pool', 'kubernetes', 'k8s'], "this project's store is a SQLite file here")]
    for args, said in cases:
        r = cli(*args)
        assert r.returncode == 1 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert 'ok' not in [s['name'] for s in list_schedules(operator)]  # nothing half-made
    nobody = cli('schedule', 'list', AIINFRA_ORCHESTRATOR_PORT=str(free_port()))
    assert nobody.returncode == 1 and 'start it with `aiinfra scheduler start`' in nobody.stderr, nobody.stderr
    elsewhere = cli('scheduler', 'start', AIINFRA_ORCHESTRATOR_API_URL=f"http://127.0.0.1:{free_port()}/api")
    assert elsewhere.returncode == 1 and 'does not answer: check [orchestrator] api_url' in elsewhere.stderr, elsewhere.stderr
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0)); taken.listen()
        r = cli('scheduler', 'start', AIINFRA_HOME=str(tmp_path/'other-home'), AIINFRA_ORCHESTRATOR_PORT=str(taken.getsockname()[1]))
    assert r.returncode == 1 and 'is taken by another program: set [orchestrator] port' in r.stderr, r.stderr
    assert api_url(operator.settings).endswith(f":{operator.settings.orchestrator.port}/api")


def test_kubernetes_and_docker_pools_run_the_same_schedules_in_containers(operator, tmp_path, pg_url):
    "Without a cluster: the pools are made, their jobs rendered by the Kubernetes and Docker workers' own code, and the Kubernetes job's command run"
    import asyncio, json
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_docker.worker import DockerWorkerJobConfiguration
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration
    from aiinfra_nb.orchestrate.pools import create_pool
    made = [create_pool(kind, f'{kind}-pool', store_url=pg_url, project=operator) for kind in ('kubernetes', 'docker')]
    assert [(m['type'], m['secret'], m['updated']) for m in made] == [('kubernetes', 'aiinfra-store-kubernetes-pool', False),
                                                                       ('docker', 'aiinfra-store-docker-pool', False)]
    assert create_pool('kubernetes', 'kubernetes-pool', store_url=pg_url, project=operator)['updated']  # again: the template updated
    with pytest.raises(SchedulerError, match="exists, of type kubernetes"): create_pool('docker', 'kubernetes-pool', store_url=pg_url, project=operator)

    # a project as a cluster sees it: pushed to a git server (a bare repository) with a DVC remote in its committed config
    store = tmp_path/'pods.db'  # its settings' store: the containers write to the pool's instead
    root = repo(tmp_path/'pods', 'stages:\n  count:\n    cmd: python -c "open(\'n.txt\', \'w\').write(\'7\')"\n    deps: [seven.txt]\n    outs: [n.txt]\n', store)
    (root/'seven.txt').write_text('7\n')
    subprocess.run([str(Path(sys.executable).parent/'dvc'), 'remote', 'add', '-q', '-d', 'bucket', str(tmp_path/'bucket')], cwd=root, check=True)
    git = lambda *a: subprocess.run(['git', '-C', str(root), '-c', 'user.name=t', '-c', 'user.email=t@t', *a], check=True, capture_output=True)
    git('add', '-A'); git('commit', '-qm', 'a remote')
    subprocess.run(['git', 'init', '-q', '--bare', str(tmp_path/'pods.git')], check=True)
    git('remote', 'add', 'origin', str(tmp_path/'pods.git')); git('push', '-q', '-u', 'origin', 'HEAD')
    image = 'registry.internal:5000/aiinfra/pods-pipeline:0123456789ab'
    added = add_schedule(root, cron='0 3 1 1 *', pool='kubernetes-pool', image=image, project=operator)
    assert (added['pool'], added['image'], 'note' not in added) == ('kubernetes-pool', image, True), added
    add_schedule(root, cron='0 3 1 1 *', name='pods-docker', pool='docker-pool', image=image, project=operator)
    alone = repo(tmp_path/'alone', 'stages:\n  s:\n    cmd: "true"\n', tmp_path/'alone.db')  # no git remote, no DVC remote, no image
    with pytest.raises(SchedulerError, match="has no git remote 'origin': a container clones the project from where it is pushed"):
        add_schedule(alone, cron='0 3 1 1 *', pool='kubernetes-pool', project=operator)
    subprocess.run(['git', '-C', str(alone), 'remote', 'add', 'origin', str(tmp_path/'pods.git')], check=True)
    with pytest.raises(SchedulerError, match='names no DVC remote: a container gets the project'): add_schedule(alone, cron='0 3 1 1 *', pool='kubernetes-pool', project=operator)
    subprocess.run([str(Path(sys.executable).parent/'dvc'), 'remote', 'add', '-q', '-d', 'bucket', str(tmp_path/'bucket')], cwd=alone, check=True)
    with pytest.raises(Exception, match=r'has no pipeline image built yet: `aiinfra image build --pipeline` first'):
        add_schedule(alone, cron='0 3 1 1 *', pool='kubernetes-pool', project=operator)
    assert 'alone' not in [r['name'] for r in list_schedules(operator)]  # nothing half-made

    async def render(name: str, config_class):
        "The job of a flow run of schedule `name`, as that pool's worker prepares it"
        async with get_client() as c:
            d = await c.read_deployment_by_name(f"run_pipeline/{name}")
            fr = await c.create_flow_run_from_deployment(d.id)
            return fr, await config_class.resolve_for_flow_run(fr, client=c, work_pool=await c.read_work_pool(d.work_pool_name),
                                                                deployment=d, worker_name='test-worker')

    url = api_url(operator.settings)
    with temporary_settings({PREFECT_API_URL: url}):  # as in a worker's process
        flow_run, k8s = asyncio.run(render('pods', KubernetesWorkerJobConfiguration))
        _, docker = asyncio.run(render('pods-docker', DockerWorkerJobConfiguration))
        assert Secret.load('aiinfra-store-kubernetes-pool').get() == pg_url
    container = k8s.job_manifest['spec']['template']['spec']['containers'][0]
    env = {e['name']: e['value'] for e in container['env']}
    assert (container['image'], container['args'], env['AIINFRA_DB_URL'], env['PREFECT_API_URL']) == (image, ['prefect', 'flow-run', 'execute'], pg_url, url)
    assert (docker.image, docker.command, docker.env['AIINFRA_DB_URL']) == (image, 'prefect flow-run execute', pg_url)
    with client(operator.settings) as c:  # the URL is in the secret, not in the pool's template or the deployment
        for name in ('kubernetes-pool', 'docker-pool'):
            assert pg_url not in json.dumps(c.read_work_pool(name).base_job_template)
        d = c.read_deployment_by_name('run_pipeline/pods')
        assert pg_url not in json.dumps([d.parameters, d.job_variables])
        assert d.parameters['repo'] == str(tmp_path/'pods.git') and d.job_variables == {'image': image}

    # the Kubernetes job's command, run here as its container would run it (the toolkit of this environment for the image's)
    home = tmp_path/'container-home'
    job_env = {**env, 'PATH': f"{Path(sys.executable).parent}:{os.environ['PATH']}", 'HOME': str(home),
               'AIINFRA_HOME': str(home/'.aiinfra'), 'PREFECT_HOME': str(home/'.prefect')}
    done = subprocess.run(container['args'], env=job_env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = query(sa.select(runs.c.name, runs.c.status, runs.c.extra).where(runs.c.kind == 'schedule'), get_engine(pg_url))
    assert (run['name'], run['status'], run['extra']['repo'], run['extra']['flow_run_id']) == ('pods', 'finished', str(tmp_path/'pods.git'), str(flow_run.id))
    assert any((tmp_path/'bucket').rglob('*')) and not (root/'n.txt').exists()  # pushed to the remote; the working copy untouched
    assert schedule_runs(store) == []  # the pool's store, not the one the project's settings name
    with client(operator.settings) as c: assert c.read_flow_run(flow_run.id).state.is_completed()


def test_the_checks_run_on_the_scheduler_and_a_drift_alert_retrains_once(operator, tmp_path):
    "scheduler start registers the monitor and the alert checks; a drift alert with on_drift = retrain runs the project's schedule, once"
    from prefect.client.schemas.objects import StateType
    from aiinfra_nb.ops.alerts import check_alerts
    from aiinfra_nb.ops.overview import list_alerts
    from aiinfra_nb.ops.store import metrics, writing
    from aiinfra_nb.orchestrate.checks import act
    env = {**os.environ, 'AIINFRA_HOME': str(operator.settings.store.home), 'AIINFRA_ORCHESTRATOR_PORT': str(operator.settings.orchestrator.port)}
    started = subprocess.run([str(Path(sys.executable).parent/'aiinfra'), 'scheduler', 'start'], capture_output=True, text=True, env=env, timeout=300)
    assert started.returncode == 0 and 'checks: aiinfra-monitor every 5 min, aiinfra-alerts every 5 min' in started.stdout, started.stderr
    with client(operator.settings) as c:
        for name in ('aiinfra-monitor', 'aiinfra-alerts'):
            d = c.read_deployment_by_name(f"{name}/{name}")
            assert d.schedules[0].schedule.interval.total_seconds() == 300 and d.tags == ['aiinfra-checks']
            run = c.create_flow_run_from_deployment(d.id)
            state = wait_for(lambda: (s := c.read_flow_run(run.id).state) and s.is_final() and s, 240, f'{name} ran')
            assert state.type == StateType.COMPLETED, (name, state)
    assert not {'aiinfra-monitor', 'aiinfra-alerts'} & {r['name'] for r in list_schedules(operator)}  # not the projects' schedules

    store = tmp_path/'drifting.db'
    root = repo(tmp_path/'drifting', 'stages:\n  fit:\n    cmd: python -c "print(1)"\n', store)
    add_schedule(root, cron='0 3 1 1 *', project=operator)
    project = Project.open(root, environ={**env, 'AIINFRA_ALERTS_ON_DRIFT': 'retrain'})
    now = time.time()
    with writing(project.engine) as c:  # the last check of its model found most of its features drifted
        c.execute(runs.insert().values(id='check-1', project='drifting', kind='monitor', name='m', status='finished', started_at=now, ended_at=now,
                                       extra=dict(task='binary', version=1, rows=500, drifted=['a', 'b'])))
        c.execute(metrics.insert().values(run_id='check-1', key='drift/share', value=1.0, time=now))
    (alert,) = check_alerts(project)['opened']
    (done,) = act(project)
    assert (alert['rule'], done['rule'], done['retrain']) == ('drift', 'drift', 'drifting'), done
    assert act(project) == []  # once per alert
    (retrained,) = wait_for(lambda: ended(store, 1), 300, 'the retraining')
    assert (retrained['status'], retrained['extra']['trigger'], retrained['extra']['flow_run_id']) == ('finished', 'manual', done['flow_run_id'])
    assert list_alerts(engine=project.engine)[0]['action']['retrain'] == 'drifting'


def test_a_scheduled_report_reaches_whoever_listens(operator, tmp_path):
    "schedule add --report: a Prefect deployment of the report flow; run now, the page is made in the project and Apprise posts it, attached"
    import base64, nbformat
    from test_monitor import Receiver
    env = {**os.environ, 'AIINFRA_HOME': str(operator.settings.store.home), 'AIINFRA_ORCHESTRATOR_PORT': str(operator.settings.orchestrator.port)}
    cli = lambda *a: subprocess.run([str(Path(sys.executable).parent/'aiinfra'), *map(str, a)], capture_output=True, text=True, env=env, timeout=120)
    store = tmp_path/'shop.db'
    root = repo(tmp_path/'shop', 'stages:\n  s:\n    cmd: "true"\n', store)
    cells = [nbformat.v4.new_code_cell("days = 1  # how far back"), nbformat.v4.new_markdown_cell("# Sales of the week"),
             nbformat.v4.new_code_cell("import polars as pl\nsecret_code_marker = 42\npl.DataFrame({'day': list(range(days)), 'sales': [10 * d for d in range(days)]})")]
    cells[0].metadata['tags'] = ['parameters']
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}}), nb := root/'sales.ipynb')
    hook = Receiver()
    added = cli('schedule', 'add', root, '--report', nb, '-p', 'days', '3', '--cron', '0 7 * * 1', '--notify', hook.url)
    assert added.returncode == 0 and 'scheduled shop-sales: cron 0 7 * * 1, the report sales.ipynb of shop, sent to 1 URL(s)' in added.stdout, added.stderr
    assert cli('schedule', 'add', root, '--report', nb, '-p', 'weeks', '3', '--cron', '0 7 * * 1', '--name', 'x').stderr.strip() == \
           "aiinfra: error: sales.ipynb has no parameter 'weeks': its parameters are days"
    assert {s['name']: s for s in list_schedules(operator)}['shop-sales']['stages'] == 'report sales.ipynb'
    run_schedule('shop-sales', project=operator)
    (sent,) = wait_for(lambda: hook.got, 240, 'the report sent')
    (attached,) = sent['attachments']
    page = base64.b64decode(attached['base64']).decode()
    assert attached['filename'].startswith('sales-') and attached['filename'].endswith('.html') and attached['filename'] in sent['message']
    assert 'Sales of the week' in page and '<td>20</td>' in page and 'secret_code_marker' not in page  # its table for days = 3, no code
    (made,) = query(sa.select(runs.c.status, runs.c.output, runs.c.params).where(runs.c.kind == 'report'), get_engine(f"sqlite:///{store}"))
    assert (made['status'], made['params']['days'], Path(made['output']).parent) == ('finished', 3, root/'data'/'reports')
    remove_schedule('shop-sales', project=operator)
