"""Governance for real: two projects' `aiinfra serve` on one store, and whose keys each takes; a project's admin kept to its
project; keys made before keys had projects still working after the migration (SQLite and PostgreSQL); who created, revoked
and promoted, in the audit; `aiinfra trace` of what is not there; `aiinfra report` of the analytics tutorial."""
import json, re, sys, time
from pathlib import Path

import httpx
import sqlalchemy as sa

from aiinfra_nb.models.registry import Registry
from aiinfra_nb.ops.record import operator
from aiinfra_nb.ops.store import MIGRATIONS, audit, get_engine, machine_sessions, machines, query, store_summary, writing
from aiinfra_nb.serve.auth import KeyRing, create_key, hash_secret, list_keys, revoke_key
from conftest import ROOT
from test_cli import aiinfra, one_line_error
from test_serve import V1, Service, save_model
from test_store import v1_store

BIN = Path(sys.executable).parent


def project_service(tmp: Path, url: str, project: str) -> Service:
    "`aiinfra serve` of `project` (its own catalog and models) on the shared store, with model 'delay' v1 in production"
    svc = Service(tmp/project, url, rate_limit='100000/second')
    svc.env.update(AIINFRA_PROJECT_NAME=project, AIINFRA_SERVICE_NAME=f'{project}-api')
    svc.registry = Registry(tmp/project/'data/models', get_engine(url), project=project)
    svc.registry.promote('delay', save_model(svc.registry, 0), by='release-manager')
    return svc


def infer(svc: Service, secret: str) -> httpx.Response:
    return httpx.post(f'{svc.base}/v1/models/delay:predict', json=V1, headers={'Authorization': f'Bearer {secret}'}, timeout=30)


def test_a_key_works_for_its_project_only_and_a_company_key_for_all(tmp_path, sqlite_url):
    eng = get_engine(sqlite_url)
    alpha, beta = (project_service(tmp_path, sqlite_url, p) for p in ('alpha', 'beta'))
    keys = {name: create_key(f'{name}-key', 'predict', project=project, engine=eng) for name, project in
            (('alpha', 'alpha'), ('beta', 'beta'), ('company', None))}
    for svc in (alpha, beta): svc.start()
    try:
        assert infer(alpha, keys['alpha']['secret']).status_code == 200
        assert infer(beta, keys['beta']['secret']).status_code == 200
        for svc in (alpha, beta): assert infer(svc, keys['company']['secret']).status_code == 200  # company-wide: both
        foreign, unknown = infer(beta, keys['alpha']['secret']), infer(beta, 'aik_' + 'x' * 40)
        assert (foreign.status_code, foreign.json(), foreign.headers.get('www-authenticate')) == \
               (401, unknown.json(), unknown.headers.get('www-authenticate'))  # another project's key reads as an unknown one
        assert infer(alpha, keys['alpha']['secret']).headers['x-model-version'] == '1'
    finally:
        for svc in (alpha, beta): svc.stop()
    refused = query(sa.select(audit.c.project, audit.c.key_name, audit.c.status_code).where(audit.c.status_code == 401), eng)
    assert {'project': 'beta', 'key_name': 'alpha-key', 'status_code': 401} in refused  # the audit knows whose key it was
    shown = {k['name']: k for k in list_keys(eng)}
    assert (shown['alpha-key']['project'], shown['beta-key']['project'], shown['company-key']['project']) == ('alpha', 'beta', 'all projects')
    assert shown['alpha-key']['last_used_at'] and shown['company-key']['last_used_at']

    revoke_key(keys['beta']['id'], engine=eng, by='security-officer')
    actions = query(sa.select(audit.c.route, audit.c.key_name, audit.c.project, audit.c.path).where(audit.c.service == 'admin').order_by(audit.c.id), eng)
    assert [(a['route'], a['key_name']) for a in actions] == [('models.promote', 'release-manager')] * 2 + [('keys.create', operator())] * 3 + \
           [('keys.revoke', 'security-officer')]
    assert [a['project'] for a in actions[2:]] == ['alpha', 'beta', None, 'beta']
    assert 'delay v1 -> production' in actions[0]['path']


def test_a_projects_admin_cannot_act_on_another_project(tmp_path, sqlite_url):
    "An admin key of project alpha stops alpha's machine, not beta's; a company admin stops beta's; each refusal one line"
    eng = get_engine(sqlite_url)
    with writing(eng) as c:
        for name, project in (('gpu-alpha', 'alpha'), ('gpu-beta', 'beta')):
            c.execute(machines.insert().values(name=name, kind='gpu-h100', registered_at=time.time()))
            c.execute(machine_sessions.insert().values(id=f's-{name}', machine=name, kind='gpu-h100', project=project, started_at=time.time() - 600,
                                                       last_heartbeat_at=time.time(), price_per_hour=4.0))
    env = dict(AIINFRA_DB_URL=sqlite_url, AIINFRA_PROJECT_NAME='alpha', AIINFRA_MACHINES_STOP_COMMAND=f"sh -c 'echo \"$1\" >> {tmp_path/'stopped'}' stop {{machine}}")
    alpha_admin = create_key('alpha-admin', 'admin', project='alpha', engine=eng)['secret']
    company_admin = create_key('ops', 'admin', engine=eng)['secret']
    one_line_error(aiinfra('machines', 'stop', 'gpu-beta', '--key', alpha_admin, **env),
                   "key 'alpha-admin' is an admin of project 'alpha' only, and gpu-beta works for beta")
    assert not (tmp_path/'stopped').exists()
    assert aiinfra('machines', 'stop', 'gpu-alpha', '--key', alpha_admin, **env).returncode == 0
    one_line_error(aiinfra('machines', 'stop', 'gpu-beta', '--key', alpha_admin, **{**env, 'AIINFRA_PROJECT_NAME': 'beta'}), 'unknown API key')  # on beta's side: unknown
    done = aiinfra('machines', 'stop', 'gpu-beta', '--key', company_admin, **{**env, 'AIINFRA_PROJECT_NAME': 'beta'})
    assert done.returncode == 0 and 'stopped by ops' in done.stdout, done.stderr
    assert (tmp_path/'stopped').read_text() == 'gpu-alpha\ngpu-beta\n'
    stops = query(sa.select(audit.c.key_name, audit.c.project, audit.c.path).where(audit.c.route == 'machines.stop').order_by(audit.c.id), eng)
    assert [(a['key_name'], a['project'], a['path']) for a in stops] == [('alpha-admin', 'alpha', 'machines.stop machine gpu-alpha (1 session(s) ended)'),
                                                                         ('ops', 'beta', 'machines.stop machine gpu-beta (1 session(s) ended)')]


def test_keys_made_before_projects_had_keys_keep_working_everywhere(store_url):
    "A store as it landed (v10), with a key created then (no project): after the migration, a company-wide key, on every project's server"
    landed = v1_store(store_url, {v: MIGRATIONS[v] for v in range(2, 11)})
    secret = 'aik_' + 'k' * 40
    with landed.begin() as c:  # the row the landed create_key wrote
        c.execute(sa.text("INSERT INTO api_keys (id, name, key_hash, prefix, role, created_at) VALUES (:id, :name, :hash, :prefix, 'predict', :at)"),
                  dict(id='old1', name='billing', hash=hash_secret(secret), prefix=secret[:10], at=time.time() - 86400))
    landed.dispose()
    eng = get_engine(store_url)
    assert store_summary(eng)['schema_version'] == max(MIGRATIONS)
    for project in ('churn', 'fraud', None):
        key, why = KeyRing(eng, ttl=0, project=project).check(secret)
        assert (key.name, key.role, key.project, why) == ('billing', 'predict', None, None), (project, why)
    assert [(k['name'], k['project']) for k in list_keys(eng)] == [('billing', 'all projects')]


def test_trace_of_an_unknown_request_is_one_line(tmp_path, sqlite_url):
    one_line_error(aiinfra('trace', 'no-such-request', AIINFRA_DB_URL=sqlite_url), "no request 'no-such-request' in the audit")
    one_line_error(aiinfra('trace', '--model', 'delay', '--version', '3', AIINFRA_DB_URL=sqlite_url), "no version 3 of model 'delay'")


def test_report_of_the_analytics_tutorial_is_its_tables_without_code(tmp_path):
    out = tmp_path/'weekly.html'
    made = aiinfra('report', str(ROOT/'nbs/tutorials/analytics.ipynb'), '-p', 'days', '7', '--out', str(out), '--json')
    assert made.returncode == 0, made.stderr
    r = json.loads(made.stdout)
    assert (r['report'], r['parameters']) == (str(out), {'days': 7})
    page = out.read_text()
    tables = re.findall(r'<table', page)
    assert len(tables) >= 6, len(tables)  # the carriers, visibility, per project, and the week's runs, cost, calls, alerts
    assert 'Worst carriers, month by month' in page and 'The weekly report' in page
    for code in ('%%sql -c', 'row_number() over', 'assert ', 'from aiinfra_nb', 'timedelta('):  # nothing of the code cells
        assert code not in page, code
    assert 'https://cdnjs' not in page  # opens offline
    one_line_error(aiinfra('report', str(ROOT/'nbs/tutorials/analytics.ipynb'), '-p', 'weeks', '2'), "has no parameter 'weeks'")
    one_line_error(aiinfra('report', str(ROOT/'nbs/tutorials/analytics.ipynb'), '--to', 'docx'), "--to 'docx': html or pdf")
