"""The aiinfra CLI on real stores, and its errors: one clear line, never a traceback."""
import json, os, subprocess, sys
from pathlib import Path

AIINFRA = str(Path(sys.executable).parent/'aiinfra')


def aiinfra(*args, cwd=None, **env):
    e = {**os.environ, **env}
    e.pop('AIINFRA_PROJECT_ROOT', None)
    return subprocess.run([AIINFRA, *args], capture_output=True, text=True, cwd=cwd, env=e, timeout=120)


def one_line_error(p, *contains):
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('aiinfra: error: '), p.stderr
    for c in contains: assert c in lines[0], lines[0]


def test_status_runs_logs_on_a_store(tmp_path, store_url):
    code = f"""
from aiinfra_nb.ops import record
from aiinfra_nb.ops.store import get_engine
with record.start_run('etl', name='nightly', project='flights', engine=get_engine({store_url!r})) as r:
    r.log_metrics({{'rows': 336776}}); r.log_event('loaded 336776 rows', level='WARNING')
"""
    assert subprocess.run([sys.executable, '-c', code], env={**os.environ, 'AIINFRA_DB_URL': store_url}).returncode == 0
    st = aiinfra('status', AIINFRA_DB_URL=store_url)
    assert st.returncode == 0 and 'nightly' in st.stdout and 'cost today' in st.stdout, st.stderr
    runs = json.loads(aiinfra('runs', '--project', 'flights', '--json', AIINFRA_DB_URL=store_url).stdout)
    assert [(r['name'], r['status']) for r in runs] == [('nightly', 'finished')]
    logs = json.loads(aiinfra('logs', '--level', 'warning', '--grep', '336776', '--json', AIINFRA_DB_URL=store_url).stdout)
    assert logs[0]['message'] == 'loaded 336776 rows'
    assert json.loads(aiinfra('logs', '--level', 'error', '--json', AIINFRA_DB_URL=store_url).stdout) == []


def test_malformed_settings_ini(tmp_path):
    (tmp_path/'settings.ini').write_text('[store\nurl = x\n')
    one_line_error(aiinfra('status', cwd=tmp_path), str(tmp_path/'settings.ini'), 'line 1')
    (tmp_path/'settings.ini').write_text('[service]\nport = http\n')
    one_line_error(aiinfra('status', cwd=tmp_path), '[service] port', 'expected a whole number')


def test_unknown_store_scheme():
    one_line_error(aiinfra('runs', AIINFRA_DB_URL='mongodb://db:27017/x'), "unknown scheme 'mongodb'")


def test_unreachable_postgresql():
    one_line_error(aiinfra('status', AIINFRA_DB_URL='postgresql://aiinfra@127.0.0.1:1/aiinfra'),
                   'cannot open the store postgresql+psycopg://aiinfra@127.0.0.1:1/aiinfra')


def test_bad_level_is_one_line():
    one_line_error(aiinfra('logs', '--level', 'loud'), "level 'loud'")


def test_machines_stop_needs_an_admin_key_and_every_attempt_is_an_event(tmp_path, store_url):
    "aiinfra machines stop: refused without an admin key (one line), runs [machines] stop_command with one, ends the session; each attempt an event"
    code = f"""
import time
from aiinfra_nb.ops.store import get_engine, machines, machine_sessions, writing
with writing(get_engine({store_url!r})) as c:
    c.execute(machines.insert().values(name='gpu-node-7', kind='gpu-h100', registered_at=time.time()))
    c.execute(machine_sessions.insert().values(id='s-left-on', machine='gpu-node-7', kind='gpu-h100', started_at=time.time() - 3600,
                                               last_heartbeat_at=time.time(), price_per_hour=4.5))
"""
    assert subprocess.run([sys.executable, '-c', code]).returncode == 0
    env = dict(AIINFRA_DB_URL=store_url, AIINFRA_MACHINES_STOP_COMMAND=f"sh -c 'echo \"$1\" >> {tmp_path/'stopped'}' stop {{machine}}")
    admin = json.loads(aiinfra('keys', 'create', '--name', 'ops', '--role', 'admin', '--json', **env).stdout)['secret']
    viewer = json.loads(aiinfra('keys', 'create', '--name', 'bi', '--role', 'read', '--json', **env).stdout)['secret']
    one_line_error(aiinfra('machines', 'stop', 'gpu-node-7', **env), 'no API key')
    one_line_error(aiinfra('machines', 'stop', 'gpu-node-7', '--key', viewer, **env), "key 'bi' has the read role")
    assert not (tmp_path/'stopped').exists()
    done = aiinfra('machines', 'stop', 'gpu-node-7', **env, AIINFRA_API_KEY=admin)
    assert done.returncode == 0 and 'machine gpu-node-7 stopped by ops: 1 session(s) ended' in done.stdout, done.stderr
    assert (tmp_path/'stopped').read_text() == 'gpu-node-7\n'
    state = {m['machine']: m['state'] for m in json.loads(aiinfra('machines', '--json', **env).stdout)}
    assert state == {'gpu-node-7': 'off'}
    said = sorted(e['message'] for e in json.loads(aiinfra('logs', '--json', **env).stdout) if e['logger'] == 'aiinfra.admin')
    assert [m.split(':')[0] for m in said] == ["machine gpu-node-7 stopped by ops (1 session(s) ended)",
                                               "refused to stop machine 'gpu-node-7' for key 'bi' (403)", "refused to stop machine 'gpu-node-7' for no valid key (401)"], said
    assert not [a for a in json.loads(aiinfra('audit', '--json', **env).stdout) if a['path'].startswith('/admin/')]  # no request reached a service


def test_projects_scan_goes_on_past_bad_repositories_and_an_unreachable_store(tmp_path):
    "aiinfra projects: a repository without DVC and a broken one are rows that say so; with the store away, a warning, not a failure"
    plain = tmp_path/'portfolio'/'no-dvc'
    plain.mkdir(parents=True)
    for cmd in (['git', 'init', '-q', '-b', 'main'], ['git', '-c', 'user.name=a', '-c', 'user.email=a@b', 'commit', '-q', '--allow-empty', '-m', 'first']):
        subprocess.run(cmd, cwd=plain, check=True)
    (tmp_path/'portfolio'/'broken'/'.git').mkdir(parents=True)  # claims to be a repository
    for store, warned in ((f"sqlite:///{tmp_path/'store.db'}", False), ('postgresql://nobody@127.0.0.1:1/none', True)):
        p = aiinfra('projects', '--root', str(tmp_path/'portfolio'), '--json', AIINFRA_DB_URL=store)
        assert p.returncode == 0, p.stderr
        rows = {Path(r['repo']).name: r for r in json.loads(p.stdout)}
        assert (rows['no-dvc']['pipeline'], rows['no-dvc']['branch'], rows['no-dvc']['error']) == ('none', 'main', None)
        assert rows['broken']['pipeline'] == 'unknown' and rows['broken']['error'].startswith('PortfolioError: git')
        assert ('aiinfra: warning: store: cannot open the store' in p.stderr) == warned, p.stderr


def test_audit_and_services_fit_a_120_column_terminal(sqlite_url):
    "Long paths and errors are cut with an ellipsis, one line per row; today's times as times; --json keeps every field"
    import time
    from aiinfra_nb.ops.store import audit, get_engine, services
    now = time.time()
    calls = [dict(time=now - i, service='flights-api', request_id=f'req-{i}', key_id='k1', key_name='billing-team-key', role='predict',
                  method='POST', path='/v2/models/flights-delay-with-a-long-name/versions/12/infer?' + 'q' * 80, model='flights-delay-with-a-long-name',
                  model_version=12, status_code=422, latency_ms=12.5, rows=32, error='invalid request body: ' + 'Input should be a valid dictionary ' * 8)
             for i in range(5)]
    with get_engine(sqlite_url).begin() as c:
        c.execute(audit.insert(), calls)
        c.execute(services.insert().values(name='flights-delay-with-a-long-name-api', project='flights-delay-with-a-long-name', kind='model-api',
                                           url='http://127.0.0.1:8000/' + 'p' * 60, host='a-build-machine.internal.example.com', pid=12345,
                                           model='flights-delay-with-a-long-name', status='up', started_at=now - 90000, last_seen_at=now))
    for cmd, rows in (('audit', 5), ('services', 1)):
        p = aiinfra(cmd, AIINFRA_DB_URL=sqlite_url, COLUMNS='120')
        assert p.returncode == 0, p.stderr
        lines = p.stdout.rstrip('\n').splitlines()
        assert len(lines) == rows + 1 and max(map(len, lines)) <= 120, p.stdout  # a header, then one line per row
        assert all('…' in l for l in lines[1:]), p.stdout
    audit_lines = aiinfra('audit', AIINFRA_DB_URL=sqlite_url, COLUMNS='120').stdout.splitlines()
    assert audit_lines[1].startswith(time.strftime('%H:%M:%S', time.localtime(now))) and '422' in audit_lines[1]
    full = json.loads(aiinfra('audit', '--json', AIINFRA_DB_URL=sqlite_url, COLUMNS='120').stdout)
    assert full[0]['path'] == calls[0]['path'] and full[0]['error'] == calls[0]['error'] and full[0]['request_id'] == 'req-0'


def test_stored_text_is_shown_as_text_never_markup_or_terminal_commands(sqlite_url):
    "What callers sent (a path, a request id, a key's name) is stored as is, and every table prints it as plain text"
    import time
    from aiinfra_nb.ops.store import audit, get_engine
    from aiinfra_nb.serve.auth import create_key
    eng = get_engine(sqlite_url)
    with eng.begin() as c:
        c.execute(audit.insert().values(time=time.time(), method='GET', path='/v2/models/[/i]x\x1b[2J\x1b]8;;http://evil/\x07link', status_code=404,
                                        error='no model [blink]x[/blink]'))
    create_key('[/x]', 'read', engine=eng)
    code = """
from aiinfra_nb.ops.record import log_event, flush
log_event('[bold]x\\x1b[31mred', request_id='[/b]x'); flush()
"""
    assert subprocess.run([sys.executable, '-c', code], env={**os.environ, 'AIINFRA_DB_URL': sqlite_url}).returncode == 0
    for cmd in (['audit'], ['audit', '--status', '404'], ['logs'], ['keys', 'list']):
        p = aiinfra(*cmd, AIINFRA_DB_URL=sqlite_url, COLUMNS='200')
        assert p.returncode == 0, (cmd, p.stderr)
        assert '\x1b' not in p.stdout and '\x07' not in p.stdout, cmd
    assert '[/i]x' in aiinfra('audit', AIINFRA_DB_URL=sqlite_url, COLUMNS='200').stdout
    assert '[/x]' in aiinfra('keys', 'list', AIINFRA_DB_URL=sqlite_url, COLUMNS='200').stdout
    assert '[/b]x' in aiinfra('logs', AIINFRA_DB_URL=sqlite_url, COLUMNS='200').stdout
