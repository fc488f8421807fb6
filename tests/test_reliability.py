"""The store under load and under crashes: concurrent writers, SIGKILL mid-batch."""
import os, random, signal, sqlite3, subprocess, sys, time

WRITER = """
import sys, time
from aiinfra_nb.ops import record
from aiinfra_nb.ops.store import get_engine
url, start_at, steps, keys = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
eng = get_engine(url)
run = record.Run.start('train', project='load', engine=eng)
while time.time() < start_at: time.sleep(0.001)  # every process starts writing at the same instant
for step in range(steps): run.log_metrics({f'k{i}': step + i for i in range(keys)}, step=step)
run.end()
print(run.id)
"""


def test_eight_processes_writing_at_once(tmp_path):
    "8 processes x 5,000 points into one SQLite store at once: every row lands, no 'database is locked' anywhere"
    url = f"sqlite:///{tmp_path/'load.db'}"
    env = {**os.environ, 'AIINFRA_RECORD_BATCH_ROWS': '200', 'AIINFRA_RECORD_FLUSH_S': '0.01'}  # many small transactions: much contention
    start_at = str(time.time() + 4)
    procs = [subprocess.Popen([sys.executable, '-c', WRITER, url, start_at, '1000', '5'], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert 'locked' not in err and 'Traceback' not in err, err
    con = sqlite3.connect(tmp_path/'load.db')
    assert con.execute('SELECT count(*) FROM metrics').fetchone() == (40_000,)
    assert con.execute("SELECT count(*) FROM runs WHERE status = 'finished'").fetchone() == (8,)
    assert sorted(r for (r,) in con.execute('SELECT DISTINCT run_id FROM metrics')) == sorted(o.strip() for o, _ in outs)


def test_sigkill_mid_batch_leaves_whole_batches(tmp_path):
    "A writer killed with SIGKILL while committing leaves an intact store holding whole calls only"
    db = tmp_path/'crash.db'
    env = {**os.environ, 'AIINFRA_RECORD_BATCH_ROWS': '1000', 'AIINFRA_RECORD_FLUSH_S': '0.005'}
    rng = random.Random(7)
    before = 0
    for attempt in range(5):
        p = subprocess.Popen([sys.executable, '-c', WRITER, f'sqlite:///{db}', '0', '1000000', '100'], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until it is writing, then kill it at a random moment
            try:
                if sqlite3.connect(db, timeout=30).execute('SELECT count(*) FROM metrics').fetchone()[0] > before: break
            except sqlite3.OperationalError: pass
            time.sleep(0.05)
        time.sleep(rng.uniform(0.05, 0.6))
        p.send_signal(signal.SIGKILL); p.wait()
        con = sqlite3.connect(db, timeout=30)
        assert con.execute('PRAGMA integrity_check').fetchone() == ('ok',)
        partial = con.execute('SELECT run_id, step, count(*) FROM metrics GROUP BY run_id, step HAVING count(*) != 100').fetchall()
        assert partial == [], f'steps with part of their points: {partial[:5]}'
        before = con.execute('SELECT count(*) FROM metrics').fetchone()[0]
        con.close()
    assert sqlite3.connect(db).execute('SELECT count(DISTINCT run_id) FROM metrics').fetchone()[0] == 5
