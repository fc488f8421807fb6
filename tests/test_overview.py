"""The control panel's questions (ops.overview) on both store backends: the same grouped SQL answers alike."""
import time
import pytest
from aiinfra_nb.ops.machines import today_start
from aiinfra_nb.ops.overview import cost_by_project_day, overview, project_summary, run_curves, top_callers, traffic
from aiinfra_nb.ops.store import audit, get_engine, machine_sessions, machines, metrics, models, projects, runs, services, writing


def seed(engine, now):
    with writing(engine) as c:
        for p in ('churn', 'fraud'): c.execute(projects.insert().values(name=p, created_at=now))
        c.execute(runs.insert(), [dict(id=f'r{i}', project=p, kind='train', status=st, started_at=now - 60 * i)
                                  for i, (p, st) in enumerate([('churn', 'finished'), ('churn', 'failed'), ('fraud', 'running')], 1)])
        c.execute(machines.insert(), [dict(name=n, kind='cpu-2', registered_at=now) for n in ('a', 'b')])
        c.execute(machine_sessions.insert(), [
            dict(id='s1', machine='a', kind='gpu-h100', project='churn', started_at=now - 3600, last_heartbeat_at=now - 5,
                 price_per_hour=4.0, idle_since=now - 3000, ended_at=None),
            dict(id='s2', machine='b', kind='cpu-2', project='fraud', started_at=now - 3600, last_heartbeat_at=now - 1800,
                 ended_at=now - 1800, price_per_hour=2.0, idle_since=None)])
        c.execute(models.insert().values(project='churn', name='m', version=1, stage='production', created_at=now))
        c.execute(services.insert().values(name='churn', project='churn', status='up', started_at=now, last_seen_at=now))
        c.execute(audit.insert(), [dict(time=now - i, service='churn', key_name=f'k{i % 3}', model='m', project='churn',
                                        status_code=500 if i == 0 else (401 if i < 5 else 200), latency_ms=float(i + 1)) for i in range(100)])
        c.execute(metrics.insert(), [dict(run_id='r1', key='loss', step=s, value=1.0 / (s + 1), time=now) for s in range(5)])


def test_every_question_answers_alike_on_both_backends(store_url):
    engine, now = get_engine(store_url), today_start(time.time()) + 12 * 3600  # noon UTC: the seed lies inside one day
    seed(engine, now)
    o = overview(now, engine)
    assert {k: o[k] for k in ('projects', 'runs_today', 'failed_today', 'running', 'machines_on', 'machines_idle', 'api_calls_today',
                              'services_up', 'services')} == dict(projects=2, runs_today=3, failed_today=1, running=1, machines_on=1,
                                                                 machines_idle=1, api_calls_today=100, services_up=1, services=1)
    assert o['cost_today'] == pytest.approx(4.0 * 1 + 2.0 * 0.5)
    (t,) = traffic(3600, now, engine)
    assert (t['requests'], t['errors'], t['refused'], t['p50_ms'], t['p95_ms']) == (100, 1, 4, 50.0, 95.0)
    assert [c['calls'] for c in top_callers(now=now, engine=engine)] == [34, 33, 33]
    assert {(r['project'], round(r['cost'], 6)) for r in cost_by_project_day(1, now, engine)} == {('churn', 4.0), ('fraud', 1.0)}
    assert [(p['project'], p['failed_week'], p['production_models'], round(p['cost_month'], 6)) for p in project_summary(now, engine)] == \
        [('churn', 1, 1, 4.0), ('fraud', 0, 0, 1.0)]
    assert run_curves('r1', engine)['loss'][-1] == (4, 0.2)


def test_an_empty_store_answers_zeros(store_url):
    engine = get_engine(store_url)
    o = overview(engine=engine)
    assert o['projects'] == 0 and o['cost_today'] == 0 and o['api_calls_today'] == 0
    assert traffic(engine=engine) == [] and top_callers(engine=engine) == [] and project_summary(engine=engine) == []


def test_sql_over_store_tables_runs_in_the_store(store_url, tmp_path):
    "%%sql over store tables only is answered by the store (grouped there), times as UTC datetimes, on both backends"
    import polars as pl
    from aiinfra_nb.data.sql import SQLError, sql, where_it_runs
    engine, now = get_engine(store_url), today_start(time.time()) + 12 * 3600
    seed(engine, now)
    q = "select service, count(*) as calls, max(time) as last from audit where time > '2000-01-01' and status_code >= 400 group by service"
    assert where_it_runs(q, tmp_path, engine) == 'store'
    got = sql(q, tmp_path, engine)
    assert got.select('service', 'calls').rows() == [('churn', 5)] and got.schema['last'] == pl.Datetime('us', 'UTC')
    assert abs(got['last'][0].timestamp() - now) < 1e-3
    with pytest.raises(SQLError, match='query failed'): sql("select pg_read_file('/etc/passwd') as x from runs", tmp_path, engine)
    with pytest.raises(SQLError, match='query stopped after 0.5 s'):
        sql("with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c, runs", tmp_path, engine, timeout_s=0.5)
    assert sql("select count(*) as n from runs", tmp_path, engine)['n'][0] == 3  # the store still answers after a stopped query
