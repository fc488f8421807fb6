"""The project's own checks: its contract holds on its data, and its stages match its notebooks."""
import subprocess
from pathlib import Path
import yaml
from aiinfra_nb.data.contracts import check, load_contract
from aiinfra_nb.data.sources import read_table
from aiinfra_nb.ops.stages import check_stages

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT/'params.yaml').read_text())


def test_data_keeps_its_contract():
    source = ROOT/PARAMS['ingest']['source']
    if not source.exists(): subprocess.run(['dvc', 'pull', str(source)], cwd=ROOT, check=True)
    check(load_contract(ROOT/PARAMS['ingest']['contract']), read_table(source).frame)


def test_stages_match_the_notebooks():
    assert check_stages(ROOT) == []


def test_the_target_is_a_role_of_the_contract():
    contract = load_contract(ROOT/PARAMS['etl']['contract'])
    assert contract.columns_with('target') == [PARAMS['train']['target']]
