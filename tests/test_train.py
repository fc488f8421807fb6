"""On-demand training for real: preemption (SIGTERM), a killed process (SIGKILL), resume, and DDP on two CPU processes."""
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import sqlalchemy as sa

from aiinfra_nb.ops.store import get_engine, machine_sessions, metrics, query, runs

TRAIN = textwrap.dedent("""
    import sys
    from datetime import datetime, timedelta
    import polars as pl, torch
    from aiinfra_nb.train.datamodule import TabularDataModule
    from aiinfra_nb.train.fit import fit
    n, epochs, strategy, devices = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    g = torch.Generator().manual_seed(0)
    d = torch.rand(n, generator=g) * 2000
    df = pl.DataFrame({'time_hour': [datetime(2013, 1, 1) + timedelta(minutes=i) for i in range(n)], 'distance': d.tolist(),
                       'carrier': ['UA', 'AA', 'DL', 'B6'] * (n // 4), 'delayed': (d > 1000).tolist()})
    devices = int(devices) if devices.isdigit() else devices
    r = fit(TabularDataModule(df, 'delayed', batch_size=256), name='job', hidden=[32], lr=0.01, max_epochs=epochs, accelerator='cpu',
            strategy=strategy, devices=devices, progress=False)
    print('RESULT', r.status, r.epochs, r.model_version)
""")


@pytest.fixture
def env(tmp_path, sqlite_url):
    script = tmp_path/'train.py'; script.write_text(TRAIN)
    e = {**os.environ, 'AIINFRA_DB_URL': sqlite_url, 'AIINFRA_DATA_DIR': str(tmp_path/'data'),
         'AIINFRA_TRAIN_CHECKPOINTS': str(tmp_path/'ckpt'), 'AIINFRA_MACHINES_HEARTBEAT_S': '0.5', 'PYTHONUNBUFFERED': '1'}
    return script, e, tmp_path/'ckpt/job/last.ckpt', sqlite_url


def start(script, env, n=300_000, epochs=3, strategy='auto', devices='1'):
    return subprocess.Popen([sys.executable, str(script), str(n), str(epochs), strategy, devices], env=env, cwd=script.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(cond, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond(): return True
        time.sleep(0.1)
    raise TimeoutError('condition not met in time')


def train_runs(url):
    return query(sa.select(runs).where(runs.c.kind == 'train').order_by(runs.c.started_at), get_engine(url))


def results(p) -> list[list[str]]:
    "The RESULT line of every process (rank 0's last: it registers the model after the others return)"
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    return sorted((l.split()[1:] for l in out.splitlines() if l.startswith('RESULT')), key=lambda r: r[2] != 'None')


def result(p): return results(p)[-1]


@pytest.mark.e2e
def test_sigterm_checkpoints_and_resume_completes(env):
    script, e, last, url = env
    p = start(script, e)
    wait_for(lambda: last.exists())  # one epoch done
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    assert result(p)[0] == 'interrupted'  # a clean exit, not a crash
    r = train_runs(url)[-1]
    assert r['status'] == 'interrupted' and 'preempted' in r['error']
    s = query(sa.select(machine_sessions).where(machine_sessions.c.run_id == r['id']), get_engine(url))[0]
    assert s['ended_at'] is not None and s['cost'] is not None  # the machine is off, its cost known
    status, epochs, version = result(start(script, e))
    assert (status, epochs, version) == ('finished', '3', '1')
    r2 = train_runs(url)[-1]
    assert r2['status'] == 'finished' and r2['extra']['epochs'] == 3


@pytest.mark.e2e
def test_sigkill_then_resume_from_last_epoch(env):
    script, e, last, url = env
    p = start(script, e)
    wait_for(lambda: last.exists())
    time.sleep(0.3)
    p.kill(); p.wait()
    killed = train_runs(url)[-1]
    assert killed['status'] == 'running'  # nobody could close it; its machine turns off when its heartbeat goes stale
    status, epochs, _ = result(start(script, e))
    assert (status, epochs) == ('finished', '3')


def interrupt(script, e, last, sig=signal.SIGTERM) -> subprocess.Popen:
    "A training started, then sent `sig` once its first epoch is checkpointed"
    p = start(script, e)
    wait_for(lambda: last.exists())
    p.send_signal(sig)
    return p


def test_corrupted_checkpoint_is_a_clear_error(env):
    "An interrupted training's checkpoint, corrupted: resuming it fails clearly, and the attempt is recorded as failed"
    script, e, last, url = env
    assert result(interrupt(script, e, last))[0] == 'interrupted'
    last.write_bytes(b'\x00' * 100)
    p = start(script, e)
    out, err = p.communicate(timeout=300)
    assert p.returncode != 0 and 'is unreadable' in err and 'resume=False' in err
    failed = train_runs(url)[-1]
    assert failed['status'] == 'failed' and 'is unreadable' in failed['error']


def test_finished_checkpoint_is_not_picked_up_by_a_new_training(env):
    "A finished run's checkpoint belongs to that run: the same call again trains anew and registers a second version"
    script, e, last, url = env
    assert result(start(script, e, n=20_000, epochs=2)) == ['finished', '2', '1']
    assert result(start(script, e, n=20_000, epochs=2)) == ['finished', '2', '2']
    first, second = train_runs(url)
    assert second['extra']['resumed_from'] is None and second['extra']['trained'] is True


def test_ddp_two_cpu_processes(env):
    "strategy='ddp' on 2 CPU processes (gloo): metrics written once, by rank 0; the saved model loads"
    script, e, last, url = env
    ranks = results(start(script, e, n=8_000, epochs=2, strategy='ddp', devices='2'))
    assert ranks == [['finished', '2', 'None'], ['finished', '2', '1']]  # both processes trained; rank 0 registered
    (r,) = train_runs(url)
    assert r['params']['strategy'] == 'ddp'
    n = query(sa.select(sa.func.count()).select_from(metrics).where((metrics.c.run_id == r['id']) & (metrics.c.key == 'val_auc')), get_engine(url))
    assert list(n[0].values()) == [2]  # once per epoch, not once per process
    from aiinfra_nb.models.registry import Registry
    model, meta = Registry(Path(e['AIINFRA_DATA_DIR'])/'models', get_engine(url), project=r['project']).load('job')
    assert meta['run_id'] == r['id'] and model.config['hidden'] == [32]


def test_ctrl_c_ends_the_run_interrupted_and_closes_the_machine_session(env):
    "Ctrl-C (SIGINT) during training: the run is interrupted, not failed or left running; the machine is off, its cost known"
    script, e, last, url = env
    out, err = (p := interrupt(script, e, last, signal.SIGINT)).communicate(timeout=300)
    assert p.returncode != 0 and 'KeyboardInterrupt' in err
    r = train_runs(url)[-1]
    assert (r['status'], r['error']) == ('interrupted', 'KeyboardInterrupt')
    s = query(sa.select(machine_sessions).where(machine_sessions.c.run_id == r['id']), get_engine(url))[0]
    assert s['ended_at'] is not None and s['cost'] is not None
