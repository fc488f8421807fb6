"""The model registry on both store backends: concurrent saves, stages, refusals."""
import os, subprocess, sys, textwrap
import pytest
import torch
from aiinfra_nb.models.tabular import TabularNet
from aiinfra_nb.models.registry import Registry, RegistryError
from aiinfra_nb.ops.store import get_engine


def test_concurrent_saves_get_distinct_versions(tmp_path, store_url):
    code = textwrap.dedent(f"""
        from aiinfra_nb.models.tabular import TabularNet
        from aiinfra_nb.models.registry import Registry
        from aiinfra_nb.ops.store import get_engine
        r = Registry({str(tmp_path/'models')!r}, get_engine({store_url!r}))
        print(' '.join(str(r.save(TabularNet(4, [3]), 'delay')['version']) for _ in range(5)))
    """)
    procs = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    versions = sorted(int(v) for o, _ in outs for v in o.split())
    assert versions == list(range(1, 16))
    reg = Registry(tmp_path/'models', get_engine(store_url))
    assert sorted(int(p.name) for p in (tmp_path/'models/delay').iterdir()) == versions  # no temporary folders left
    model, meta = reg.load('delay', version=15)
    assert meta['architecture']['config']['n_numeric'] == 4


def test_production_stage_moves(tmp_path, store_url):
    reg = Registry(tmp_path/'models', get_engine(store_url))
    for _ in range(3): reg.save(TabularNet(2, hidden=[4]), 'm')
    reg.promote('m', 2)
    assert reg.load('m', stage='production')[1]['version'] == 2
    reg.promote('m', 3)
    assert [(r['version'], r['stage']) for r in reg.list('m')] == [(3, 'production'), (2, 'archived'), (1, None)]
    with pytest.raises(RegistryError, match="stage 'live'"): reg.promote('m', 1, 'live')


def test_no_pickle_is_ever_loaded(tmp_path, sqlite_url):
    "A pickle under the safetensors name is refused before anything in it can run"
    reg = Registry(tmp_path/'models', get_engine(sqlite_url))
    reg.save(TabularNet(2, hidden=[4]), 'm')
    marker = tmp_path/'pwned'

    class Evil:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    torch.save({'x': Evil()}, reg.dir('m', 1)/'model.safetensors')
    with pytest.raises(RegistryError, match='is not a safetensors file'): reg.load('m')
    assert not marker.exists()


def _promoter(url, root, rounds, barrier, seed):
    import random
    from aiinfra_nb.ops.store import get_engine
    from aiinfra_nb.models.registry import Registry
    reg, rng = Registry(root, get_engine(url)), random.Random(seed)
    for _ in range(rounds):
        barrier.wait(); reg.promote('m', rng.randint(1, 4)); barrier.wait()


def test_concurrent_promotions_leave_one_production(tmp_path, store_url):
    "4 processes promoting at the same instant, 30 times: exactly one production version after every round, no deadlock"
    import multiprocessing as mp
    from aiinfra_nb.ops.store import query
    reg = Registry(tmp_path/'models', get_engine(store_url))
    for _ in range(4): reg.save(TabularNet(2, hidden=[4]), 'm')
    ctx = mp.get_context('spawn')
    barrier = ctx.Barrier(5)
    procs = [ctx.Process(target=_promoter, args=(store_url, tmp_path/'models', 30, barrier, i)) for i in range(4)]
    for p in procs: p.start()
    for _ in range(30):
        barrier.wait(timeout=120); barrier.wait(timeout=120)  # everyone promoted: look
        assert query("SELECT count(*) AS n FROM models WHERE name = 'm' AND stage = 'production'", get_engine(store_url)) == [{'n': 1}]
    for p in procs: p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4


def test_dropped_connection_during_a_save_does_not_wedge_the_model(tmp_path, pg_url):
    "The connection dies as the version's row commits: the save settles and succeeds, and later saves go on"
    import sqlalchemy as sa
    from sqlalchemy import event
    eng = get_engine(pg_url)
    reg = Registry(tmp_path/'models', eng)
    admin = sa.create_engine(pg_url, isolation_level='AUTOCOMMIT')
    cut = []

    @event.listens_for(eng, 'commit')
    def drop_connection(conn):
        if not cut:
            cut.append(conn.connection.dbapi_connection.info.backend_pid)
            with admin.connect() as a: a.exec_driver_sql(f'SELECT pg_terminate_backend({cut[0]})')
    assert reg.save(TabularNet(2, hidden=[4]), 'm')['version'] == 1
    assert cut, 'the connection was not cut'
    assert reg.save(TabularNet(2, hidden=[4]), 'm')['version'] == 2
    assert [r['version'] for r in reg.list('m')] == [2, 1] and reg.load('m', 1)[1]['version'] == 1
    assert sorted(p.name for p in (tmp_path/'models/m').iterdir()) == ['1', '2']
    admin.dispose()


def test_registry_does_not_trust_its_own_files(tmp_path, sqlite_url):
    "Weights and hash swapped together, a symlinked version folder, promoting a broken version: all refused"
    import json, shutil
    reg = Registry(tmp_path/'models', get_engine(sqlite_url))
    for _ in range(3): reg.save(TabularNet(2, hidden=[4]), 'm')
    reg.promote('m', 1)
    other = TabularNet(2, hidden=[4])  # other weights, and a model.json rewritten to match them
    from safetensors.torch import save_file
    from aiinfra_nb.core import file_hash
    d = reg.dir('m', 2)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, d/'model.safetensors', metadata={'format': 'aiinfra-model/1'})
    meta = json.loads((d/'model.json').read_text()); meta['sha256'] = file_hash(d/'model.safetensors')
    (d/'model.json').write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match='not the ones registered'): reg.load('m', 2)
    shutil.rmtree(reg.dir('m', 3)); (tmp_path/'elsewhere').mkdir(); reg.dir('m', 3).symlink_to(tmp_path/'elsewhere')
    with pytest.raises(RegistryError, match='is a link'): reg.load('m', 3)
    with pytest.raises(RegistryError): reg.promote('m', 2)
    with pytest.raises(RegistryError): reg.promote('m', 3)
    assert [(r['version'], r['stage']) for r in reg.list('m')][-1] == (1, 'production')  # the good one still serves


def test_tampered_config_is_refused_before_allocating(tmp_path, sqlite_url):
    "A model.json asking for a huge network is refused from its shapes alone, without building it"
    import json, resource
    reg = Registry(tmp_path/'models', get_engine(sqlite_url))
    reg.save(TabularNet(2, hidden=[4]), 'm')
    d = reg.dir('m', 1)
    meta = json.loads((d/'model.json').read_text())
    meta['architecture']['config']['hidden'] = [40_000, 40_000]  # 6.4 GB of float32 if built
    (d/'model.json').write_text(json.dumps(meta))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(RegistryError, match='does not match its weights'): reg.load('m')
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: nothing near 6 GB was touched


def test_two_projects_keep_separate_versions_and_stages_of_one_model_name(tmp_path, store_url):
    engine = get_engine(store_url)
    churn, fraud = (Registry(tmp_path/p/'models', engine, project=p) for p in ('churn', 'fraud'))
    for reg, n in ((churn, 3), (fraud, 1)):
        for _ in range(n): reg.save(TabularNet(2, hidden=[4]), 'model')
    churn.promote('model', 2); fraud.promote('model', 1)
    assert [(r['version'], r['stage']) for r in churn.list('model')] == [(3, None), (2, 'production'), (1, None)]
    assert [(r['version'], r['stage']) for r in fraud.list('model')] == [(1, 'production')]
    churn.promote('model', 3)  # one production version per project and name: churn's v2 is archived, fraud's v1 untouched
    assert [r['stage'] for r in churn.list('model')] == ['production', 'archived', None]
    assert fraud.load('model', stage='production')[1]['project'] == 'fraud'
    with pytest.raises(RegistryError, match="no version 2 of model 'model'"): fraud.load('model', version=2)
