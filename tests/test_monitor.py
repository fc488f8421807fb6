"""Monitoring and alerts for real: a project made by `aiinfra new` and trained, served by `aiinfra serve` on 127.0.0.1, asked
ordinary questions (drawn from its validation rows) and shifted ones, over HTTP. Evidently's verdicts, the labels sent back, the
alerts and their notifications through Apprise to a local HTTP receiver (json://) and a local SMTP server (mailto://), the
prediction log under load (every request logged or counted), and a log kept without features that leaves no feature value
anywhere."""
import concurrent.futures, json, os, signal, subprocess, sys, threading, time, http.server
from pathlib import Path

import httpx
import polars as pl
import pytest
import sqlalchemy as sa

from aiinfra_nb.core import Project
from aiinfra_nb.data.sources import package_file
from aiinfra_nb.monitor import monitor_run
from aiinfra_nb.ops.alerts import check_alerts
from aiinfra_nb.ops.overview import list_alerts
from aiinfra_nb.ops.predictions import read_log
from aiinfra_nb.ops.record import flush
from aiinfra_nb.ops.store import events, machine_sessions, machines, metrics, query, writing
from aiinfra_nb.orchestrate.checks import act
from test_scaffold import BIN, aiinfra, in_project
from test_serve import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group('monitor')]  # one trained project and its service, the tests in order
FEATURES = ['bill_length_mm', 'bill_depth_mm', 'flipper_length_mm', 'body_mass_g', 'year', 'island', 'sex']


class Receiver:
    "A local HTTP endpoint keeping what Apprise's json:// posts to it"
    def __init__(self):
        self.got, outer = [], self
        class Hook(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                outer.got.append(json.loads(self.rfile.read(int(self.headers['content-length']))))
                self.send_response(200); self.end_headers()
            def log_message(self, *a): pass
        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Hook)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/alerts"


class Mailbox:
    "A local SMTP server (aiosmtpd) keeping what Apprise's mailto:// sends"
    def __init__(self):
        from aiosmtpd.controller import Controller
        self.got, outer = [], self
        class Handler:
            async def handle_DATA(self, server, session, envelope):
                outer.got.append(envelope.content.decode(errors='replace')); return '250 OK'
        port = free_port()
        self.controller = Controller(Handler(), hostname='127.0.0.1', port=port)
        self.controller.start()
        self.url = f"mailto://127.0.0.1:{port}?from=alerts@example.com&to=oncall@example.com&mode=insecure"


class Served:
    "`aiinfra serve` of the project on a free port of 127.0.0.1, with a predict key"
    def __init__(self, proj: Path, key: str, **env):
        self.proj, self.port, self.key = proj, free_port(), key
        self.env = {k: v for k, v in os.environ.items() if k != 'AIINFRA_DB_URL'} | {
            'PATH': f"{BIN}:{os.environ['PATH']}", 'AIINFRA_MONITOR_FLUSH_S': '0.2', 'AIINFRA_SERVICE_RATE_LIMIT': '100000/second', **env}
        self.proc = subprocess.Popen([str(BIN/'aiinfra'), 'serve', '--port', str(self.port)], cwd=proj, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.base, self.auth = f'http://127.0.0.1:{self.port}', {'Authorization': f'Bearer {key}'}
        for _ in range(600):
            try:
                if httpx.get(f'{self.base}/v2/health/ready', timeout=1).status_code == 200: return
            except httpx.HTTPError: pass
            assert self.proc.poll() is None, self.proc.communicate()
            time.sleep(0.1)
        raise TimeoutError('the service did not become ready')

    def ask(self, rows: pl.DataFrame, workers: int = 1) -> list[str]:
        "One request per row over V1; the request ids the answers carry, in order"
        def one(row: dict) -> str:
            r = client.post(f'{self.base}/v1/models/penguins:predict', json={'instances': [row]}, headers=self.auth)
            assert r.status_code == 200, r.text
            return r.headers['x-request-id']
        with httpx.Client(timeout=30) as client, concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, rows.select(FEATURES).to_dicts()))

    def logged(self, since: float, n: int, kind: str = 'predictions', seconds: float = 60):
        "Until the prediction log (or the feedback) holds `n` rows since `since`: the service writes it every 0.2 s here, later under load"
        deadline = time.monotonic() + seconds
        while read_log(self.proj/'data', 'penguins', 'penguins', kind, since=since).select(pl.len()).collect().item() < n and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> tuple[str, str]:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.communicate(timeout=120)


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    "The Palmer penguins, made by `aiinfra new` and trained by `dvc repro`, with a store of their own; its validation rows"
    base = tmp_path_factory.mktemp('monitor')
    proj = base/'penguins'
    aiinfra('new', 'penguins', '--data', package_file('palmerpenguins', 'data/penguins.csv'), '--target', 'species', '--dir', proj,
            env={'AIINFRA_DB_URL': f"sqlite:///{base/'store.db'}", 'AIINFRA_HOME': str(base/'home')})
    in_project(['dvc', 'repro'], proj)
    p = Project.open(proj)
    meta = json.loads((proj/'data/models/penguins/1/model.json').read_text())
    key = json.loads(in_project([BIN/'aiinfra', 'keys', 'create', '--name', 'monitor-test', '--role', 'predict', '--json'], proj).stdout)['secret']
    admin = json.loads(in_project([BIN/'aiinfra', 'keys', 'create', '--name', 'monitor-admin', '--role', 'admin', '--json'], proj).stdout)['secret']
    return dict(root=proj, project=p, key=key, admin=admin, validation=pl.read_parquet(p.catalog.path(meta['validation']['dataset'])))


@pytest.fixture(scope='module')
def service(project):
    s = Served(project['root'], project['key'])
    yield s
    s.stop()


def window(since: float) -> float:
    "`monitor_run`'s window (hours back from now) that starts at `since`"
    return (time.time() - since + 0.5) / 3600


def test_ordinary_traffic_gives_no_drift_alert_over_windows_and_seeds(project, service):
    "The false-positive check: three windows of questions drawn from the validation rows, each with its own seed"
    p = project['project']
    for seed in (1, 2, 3):
        time.sleep(1.1)
        since = time.time()
        service.ask(project['validation'].sample(250, with_replacement=True, seed=seed), workers=4)
        service.logged(since, 250)
        (check,) = monitor_run(p, since_h=window(since))
        assert check['rows'] == 250 and check['note'] is None, check
        assert check['drift_share'] <= p.settings.alerts.drift_share, check
    assert [a for a in check_alerts(p)['opened'] if a['rule'] == 'drift'] == []


def test_shifted_traffic_opens_one_drift_alert_naming_the_feature_and_tells_everyone_once(project, service, monkeypatch):
    hook, mail = Receiver(), Mailbox()
    monkeypatch.setenv('AIINFRA_ALERTS_NOTIFY', f"{hook.url}\nwarning,critical={mail.url}")
    monkeypatch.setenv('AIINFRA_ALERTS_DRIFT_SHARE', '0.1')  # one feature of seven is enough here
    p = Project.open(project['root'])
    time.sleep(1.1)
    since = time.time()
    shifted = project['validation'].sample(300, with_replacement=True, seed=4).with_columns(pl.col('flipper_length_mm') + 30)
    service.ask(shifted, workers=4)
    service.logged(since, 300)
    (check,) = monitor_run(p, since_h=window(since))
    assert check['drifted'] == 'flipper_length_mm', check
    report = Path(check['report']).read_text()
    assert 'flipper_length_mm' in report and len(report) > 100_000  # Evidently's page, with its plots
    first = check_alerts(p)
    (drift,) = [a for a in first['opened'] if a['rule'] == 'drift']
    assert 'flipper_length_mm' in drift['message'] and drift['project'] == 'penguins'
    assert len([g for g in hook.got if 'drift' in g['title']]) == 1 and len([m for m in mail.got if 'drift' in m]) == 1
    check_alerts(p)  # seen again: nobody is told twice
    assert len([g for g in hook.got if 'drift' in g['title']]) == 1 and len([m for m in mail.got if 'drift' in m]) == 1
    listed = json.loads(in_project([BIN/'aiinfra', 'alerts', '--open', '--json'], project['root']).stdout)
    assert any(a['rule'] == 'drift' for a in listed)
    mail.controller.stop()


def test_labels_sent_back_give_the_windows_figures(project, service):
    p = project['project']
    time.sleep(1.1)
    since = time.time()
    asked = project['validation'].sample(120, with_replacement=True, seed=5)
    ids = service.ask(asked)
    half = [{'id': i, 'label': label} for i, label in zip(ids[:60], asked['species'].to_list())]
    r = httpx.post(f'{service.base}/v1/models/penguins/feedback', json={'labels': half}, headers=service.auth)
    assert r.status_code == 200 and r.json() == {'model_name': 'penguins', 'accepted': 60}, r.text
    pl.DataFrame({'request_id': ids[60:], 'label': asked['species'].to_list()[60:]}).write_csv(project['root']/'labels.csv')
    assert '60 labels of penguins kept' in in_project([BIN/'aiinfra', 'feedback', 'labels.csv', '--model', 'penguins'], project['root']).stdout
    bad = httpx.post(f'{service.base}/v1/models/penguins/feedback', json={'labels': [{'id': '', 'label': 'x'}]}, headers=service.auth)
    assert bad.status_code == 422 and 'labels[0].id' in bad.json()['error']
    service.logged(since, 120); service.logged(since, 120, 'feedback')
    (check,) = monitor_run(p, since_h=window(since))
    assert check['labels'] == 120 and check['performance'].startswith('f1_macro '), check
    figures = {g['key']: g['value'] for g in query(sa.select(metrics.c.key, metrics.c.value).where(metrics.c.run_id == check['run_id']), p.engine)}
    assert figures['performance/f1_macro'] > 0.8 and figures['validation/f1_macro'] > 0.8, figures  # the penguins are easy


@pytest.mark.load
def test_every_request_is_logged_or_counted(project):
    "10,000 requests: the log holds as many rows, but for the drops it counted"
    s = Served(project['root'], project['key'])
    t0 = time.time()
    rows = project['validation'].sample(10_000, with_replacement=True, seed=6)
    s.ask(rows, workers=8)
    m = httpx.get(f'{s.base}/metrics', headers={'Authorization': f"Bearer {project['admin']}"}).text
    dropped = int(float(next(line.split()[-1] for line in m.splitlines() if line.startswith('aiinfra_prediction_log_dropped '))))
    s.stop()  # SIGTERM: the service writes what its log still holds
    p = project['project']
    logged = read_log(p.settings.data.dir, 'penguins', 'penguins', since=t0).filter(pl.col('key_id').is_not_null()).collect()
    assert logged.height + dropped == 10_000, (logged.height, dropped)
    assert logged['request_id'].n_unique() == logged.height


def test_without_features_no_feature_value_is_kept_anywhere(project):
    "[monitor] features = false: the answers are logged; the values asked are in neither the store, the catalog nor the logs"
    s = Served(project['root'], project['key'], AIINFRA_MONITOR_FEATURES='false')
    secret = pl.DataFrame({'bill_length_mm': [41.2345678], 'bill_depth_mm': [17.3456789], 'flipper_length_mm': [199.8765432],
                           'body_mass_g': [3901.234567], 'year': [2008.0], 'island': ['Zyxwv-Island-7'], 'sex': ['Quux-Sex-3']})
    (rid,) = s.ask(secret)
    out, err = s.stop()
    p = project['project']
    (row,) = read_log(p.settings.data.dir, 'penguins', 'penguins').filter(pl.col('request_id') == rid).collect().to_dicts()
    assert row['predicted'] in ('Adelie', 'Chinstrap', 'Gentoo') and all(row[f] is None for f in FEATURES), row  # the answer, no feature
    values = ['41.2345678', '17.3456789', '199.8765432', '3901.234567', 'Zyxwv-Island-7', 'Quux-Sex-3']
    store = Path(p.engine.url.database)
    files = [*project['root'].rglob('*'), *store.parent.glob(store.name + '*')]  # the project with its catalog; the store (and its WAL)
    everything = b''.join(f.read_bytes() for f in files if f.is_file() and '.git' not in f.parts)
    assert not [v for v in values if v.encode() in everything], 'a feature value was kept'
    assert not [v for v in values if v in out + err]  # nor in what the service said


def test_an_idle_machine_is_stopped_once_when_on_idle_is_stop(project, tmp_path, monkeypatch):
    monkeypatch.setenv('AIINFRA_ALERTS_ON_IDLE', 'stop')
    monkeypatch.setenv('AIINFRA_MACHINES_STOP_COMMAND', f"{sys.executable} -c \"print('stopping', '{{machine}}')\"")
    p = Project.open(project['root'])
    now = time.time()
    with writing(p.engine) as c:
        c.execute(machines.insert().values(name='gpu-idle-1', kind='gpu-h100', registered_at=now))
        c.execute(machine_sessions.insert().values(id='idle-1', machine='gpu-idle-1', kind='gpu-h100', project='penguins', started_at=now - 7200,
                                                   last_heartbeat_at=now - 5, idle_since=now - 5400, price_per_hour=4.5))
    check_alerts(p)
    (done,) = act(p)
    assert (done['rule'], done['stopped']) == ('machine_idle', 'gpu-idle-1'), done
    assert act(p) == []  # once per alert
    assert query(sa.select(machine_sessions.c.ended_at).where(machine_sessions.c.id == 'idle-1'), p.engine)[0]['ended_at'] is not None
    flush(30)  # the log's lines go through the batching writer
    said = query(sa.select(events.c.message).where(events.c.logger == 'aiinfra.admin'), p.engine)
    assert any('gpu-idle-1 stopped by aiinfra alerts' in e['message'] for e in said), said
    (alert,) = [a for a in list_alerts(engine=p.engine) if a['rule'] == 'machine_idle']
    assert alert['action']['stopped'] == 'gpu-idle-1'
    assert check_alerts(p)['resolved'][0]['rule'] == 'machine_idle'  # its session ended: the condition cleared
