"""The ops store on both backends: schema, upgrade in place, concurrent creation, records round-trip."""
import math, textwrap
import pytest
import sqlalchemy as sa
from aiinfra_nb.ops import record
from aiinfra_nb.ops.machines import MachineSession, hourly_price
from aiinfra_nb.ops.overview import machines_now
from aiinfra_nb.ops.store import MIGRATIONS, machine_sessions, ensure_schema, events, get_engine, metrics, query, runs, store_summary
from conftest import run_py

LATEST = max([1, *MIGRATIONS])


def test_schema_created_with_every_table(store_url):
    eng = get_engine(store_url)
    s = store_summary(eng)
    assert s['schema_version'] == LATEST
    assert set(s['rows']) == {'projects', 'runs', 'metrics', 'events', 'machines', 'machine_sessions', 'models',
                              'services', 'api_keys', 'audit', 'project_scans', 'schedules', 'alerts'}
    assert all(n == 0 for n in s['rows'].values())


def test_upgrade_in_place_keeps_rows(store_url):
    eng = get_engine(store_url)
    with record.start_run('etl', project='p', engine=eng) as run: run.log_metrics({'rows': 10})
    step = {**MIGRATIONS, LATEST + 1: lambda op: op.add_column('runs', sa.Column('cost', sa.Float))}
    assert ensure_schema(eng, step) == LATEST + 1
    assert ensure_schema(eng, step) == LATEST + 1  # already there: nothing to do
    with eng.connect() as c:
        assert c.exec_driver_sql('SELECT status, cost FROM runs').all() == [('finished', None)]
        assert c.exec_driver_sql('SELECT version FROM schema_version').scalar() == LATEST + 1


def v1_store(url: str, migrations: dict | None = None):
    "An engine on a store created by the v1 schema as it landed (tests/fixtures/schema_v1.py), then taken through `migrations`"
    from fixtures import schema_v1
    from aiinfra_nb.ops.store import create_store_engine
    eng = create_store_engine(url)
    with eng.begin() as c:
        schema_v1.metadata.create_all(c)
        c.execute(schema_v1.schema_version.insert().values(version=1))
    if migrations: ensure_schema(eng, migrations)
    return eng


def test_store_made_by_v1_upgrades_in_place(store_url):
    "A store created by the v1 schema opens upgraded, its rows intact"
    from fixtures import schema_v1
    old = v1_store(store_url)
    with old.begin() as c:
        c.execute(schema_v1.runs.insert().values(id='r1', project='p', kind='etl', status='finished', started_at=1.0, extra={'a': 1}))
    old.dispose()
    eng = get_engine(store_url)
    assert store_summary(eng)['schema_version'] == LATEST
    (r,) = query(sa.select(runs), eng)
    assert (r['id'], r['status'], r['extra'], r['parent_id']) == ('r1', 'finished', {'a': 1}, None)
    with record.start_run('train', engine=eng, parent='r1') as child: pass
    assert query(sa.select(runs.c.parent_id).where(runs.c.id == child.id), eng) == [{'parent_id': 'r1'}]


def test_models_of_a_v5_store_get_their_project(store_url):
    "v5 -> v6: a model takes its run's project (else 'default'); names are then unique per project, production too"
    from aiinfra_nb.ops.store import models
    eng = v1_store(store_url, {v: MIGRATIONS[v] for v in range(2, 6)})  # a store as v5 left it
    with eng.begin() as c:
        c.execute(runs.insert().values(id='r1', project='churn', kind='train', status='finished', started_at=1.0))
        c.exec_driver_sql("INSERT INTO models (name, version, stage, run_id, created_at) VALUES ('m', 1, 'production', 'r1', 1), "
                          "('m', 2, NULL, NULL, 2)")
    eng.dispose()
    eng = get_engine(store_url)
    assert store_summary(eng)['schema_version'] == LATEST
    rows = query(sa.select(models.c.project, models.c.name, models.c.version, models.c.stage).order_by(models.c.version), eng)
    assert [(r['project'], r['version'], r['stage']) for r in rows] == [('churn', 1, 'production'), ('default', 2, None)]
    with eng.begin() as c:  # another project may have its own production 'm' v1
        c.execute(models.insert().values(project='fraud', name='m', version=1, stage='production', created_at=3.0))
    with pytest.raises(sa.exc.IntegrityError), eng.begin() as c:
        c.execute(models.insert().values(project='churn', name='m', version=1, created_at=4.0))


def test_processes_creating_the_store_at_once(store_url):
    code = f"from aiinfra_nb.ops.store import get_engine, store_summary; print(store_summary(get_engine({store_url!r}))['schema_version'])"
    import subprocess, sys
    procs = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o.strip() for o, _ in outs] == [str(LATEST)] * 6, [e for _, e in outs]
    with get_engine(store_url).connect() as c:
        assert c.exec_driver_sql('SELECT count(*) FROM schema_version').scalar() == 1


def test_runs_metrics_events_round_trip(store_url):
    eng = get_engine(store_url)
    with record.start_run('train', name='t', project='flights', params={'lr': 0.01, 'layers': [64, 64]}, engine=eng) as run:
        for step in range(100): run.log_metrics({'loss': 1 / (step + 1), 'acc': step / 100}, step=step)
        run.log_metrics({'bad': float('nan')})
        record.log_event('epoch done', level='warning', epoch=3)
    r = query(sa.select(runs).where(runs.c.id == run.id), eng)[0]
    assert (r['status'], r['params'], r['project']) == ('finished', {'lr': 0.01, 'layers': [64, 64]}, 'flights')
    assert r['duration_s'] >= 0 and r['ended_at'] >= r['started_at']
    pts = query(sa.select(metrics.c.key, metrics.c.step, metrics.c.value).where(metrics.c.run_id == run.id)
                .order_by(metrics.c.key, metrics.c.step), eng)
    assert len(pts) == 201
    assert pts[0] == {'key': 'acc', 'step': 0, 'value': 0.0}
    assert [p['value'] for p in pts if p['key'] == 'bad'] == [None]
    ev = query(sa.select(events).where(events.c.run_id == run.id), eng)
    assert [(e['level'], e['message'], e['extra']) for e in ev] == [('WARNING', 'epoch done', {'epoch': 3})]


def test_failed_run_keeps_error_and_metrics(store_url):
    eng = get_engine(store_url)
    try:
        with record.start_run('etl', project='flights', engine=eng) as run:
            run.log_metrics({'rows_in': 336776})
            raise RuntimeError('contract broken: dep_delay has nulls')
    except RuntimeError: pass
    r = query(sa.select(runs.c.status, runs.c.error).where(runs.c.id == run.id), eng)[0]
    assert r == {'status': 'failed', 'error': 'RuntimeError: contract broken: dep_delay has nulls'}
    assert query(sa.select(metrics.c.value).where(metrics.c.run_id == run.id), eng) == [{'value': 336776.0}]


def test_machine_session_on_then_off(store_url, monkeypatch):
    monkeypatch.setenv('AIINFRA_DB_URL', store_url)
    eng = get_engine(store_url)
    with MachineSession(project='flights', heartbeat_s=0.2, engine=eng) as ms:
        import time; time.sleep(0.7)
        on = {m['machine']: m for m in machines_now(engine=eng)}[ms.machine]
        assert on['state'] == 'on' and on['cpu_pct'] is not None  # the heartbeat thread sampled
    off = {m['machine']: m for m in machines_now(engine=eng)}[ms.machine]
    assert off['state'] == 'off'
    s = query(sa.select(machine_sessions).where(machine_sessions.c.id == ms.id), eng)[0]
    assert s['price_per_hour'] == hourly_price(s['kind'])  # machine kind priced from settings.ini
    assert math.isclose(s['cost'], (s['ended_at'] - s['started_at']) / 3600 * (s['price_per_hour'] or 0))


def test_records_from_a_child_process_flushed_at_exit(store_url):
    "Nothing acknowledged is lost on a clean exit: the atexit flush writes what the queue still holds"
    code = textwrap.dedent(f"""
        from aiinfra_nb.ops import record
        from aiinfra_nb.ops.store import get_engine
        run = record.Run.start('train', project='p', engine=get_engine({store_url!r}))
        for s in range(3000): run.log_metrics({{'loss': s}}, step=s)
        print(run.id)  # no flush, no end: exit right away
    """)
    p = run_py(code, env={'AIINFRA_RECORD_FLUSH_S': '30'})
    assert p.returncode == 0, p.stderr
    n = query(sa.select(sa.func.count()).select_from(metrics).where(metrics.c.run_id == p.stdout.strip()), get_engine(store_url))
    assert list(n[0].values()) == [3000]


def test_bi_views_show_times_as_timestamps(store_url):
    "A BI tool reads the bi_* views: the same rows, times as the backend's timestamps, a session's hours and cost"
    eng = get_engine(store_url)
    with eng.begin() as c:
        c.execute(runs.insert().values(id='r', project='p', kind='train', name='nightly', status='finished', started_at=86400.0, ended_at=86460.0))
        c.execute(metrics.insert().values(run_id='r', key='loss', step=1, value=0.5, time=86430.0))
        c.execute(machine_sessions.insert().values(id='s', machine='m', kind='gpu-h100', started_at=86400.0, last_heartbeat_at=86400.0 + 1800,
                                                   price_per_hour=4.0))
    with eng.connect() as c:
        started, name = c.exec_driver_sql("SELECT started, name FROM bi_runs").one()
        (project, run_name, key), = c.exec_driver_sql("SELECT project, run_name, key FROM bi_metrics").all()
        state, hours, cost = c.exec_driver_sql("SELECT state, hours, cost FROM bi_machine_sessions").one()
    assert str(started).startswith('1970-01-02 00:00:00') and name == 'nightly'
    assert (project, run_name, key) == ('p', 'nightly', 'loss')
    assert (state, hours, cost) == ('open', 0.5, 2.0)


def test_the_writer_copies_into_postgresql_and_drops_only_a_refused_call(pg_url):
    "On PostgreSQL the batching writer uses COPY; a call the server refuses (a level longer than the column) is dropped alone"
    eng = get_engine(pg_url)
    w = record.BatchWriter(eng, flush_s=10)  # one batch: everything below is committed together, or call by call on refusal
    good = [(float(i), 'p', None, 'INFO', 'app', f'line {i}', None, None, 'h', 1, None) for i in range(1000)]
    w.put('events', good[:500])
    w.put('events', [(0.0, 'p', None, 'NOT-A-LEVEL-AT-ALL', 'app', 'refused', None, None, 'h', 1, None)])
    w.put('events', good[500:])
    w.put('metrics', [('r' * 32, 'loss', s, 1.0 / (s + 1), 0.0) for s in range(100)])
    assert w.close(30)
    assert w.dropped == 1
    with eng.connect() as c:
        assert c.exec_driver_sql('SELECT count(*), min(message), max(time) FROM events').one() == (1000, 'line 0', 999.0)
        assert c.exec_driver_sql('SELECT count(*), sum(step) FROM metrics').one() == (100, 4950)
