"""The model registry on both store backends: concurrent saves, stages, refusals."""
import os, subprocess, sys, textwrap
import pytest
import torch
from aiinfra_nb.train.model import TabularNet
from aiinfra_nb.train.registry import Registry, RegistryError
from aiinfra_nb.ops.store import get_engine


def test_concurrent_saves_get_distinct_versions(tmp_path, store_url):
    code = textwrap.dedent(f"""
        from aiinfra_nb.train.model import TabularNet
        from aiinfra_nb.train.registry import Registry
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
