"""The flights pipeline of this repository is an instance of the project template: its train and evaluate notebooks are
the template's, rendered with the answers below. Run it after changing the template's table notebooks (template/nbs/pipelines/, train and evaluate);
with --check it fails instead when the repository's copies differ (so the two cannot drift apart)."""
import shutil, sys, tempfile, warnings
from pathlib import Path

import copier

ROOT = Path(__file__).resolve().parents[1]
SHARED = ['train.ipynb', 'evaluate.ipynb']  # ingest and etl are the flights' own (the weather join)
ANSWERS = dict(project_name='aiinfra_nb', model_name='flights-delay', data_file='flights.csv.zip', target='delayed', task='binary',
               split='time', time_column='time_hour', sample_dir='data/sample', in_toolkit=True, batch_size=1024, max_epochs=2)


def render() -> Path:
    out = Path(tempfile.mkdtemp(prefix='aiinfra-reference-'))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the working tree's uncommitted template changes are what is being checked
        copier.run_copy(str(ROOT), out, data=ANSWERS, defaults=True, quiet=True, vcs_ref='HEAD')
    return out/'nbs/pipelines'


def main(check: bool) -> int:
    rendered, stale = render(), []
    for name in SHARED:
        mine = ROOT/'nbs/pipelines'/name
        if mine.read_text() != (rendered/name).read_text():
            stale.append(name)
            if not check: shutil.copyfile(rendered/name, mine)
    shutil.rmtree(rendered.parents[1], ignore_errors=True)
    if check and stale:
        print(f"nbs/pipelines/{', '.join(stale)} differ from the template's: run python .ci/render_reference.py", file=sys.stderr)
        return 1
    print(f"{'rewrote' if stale else 'in step with the template:'} {', '.join(stale or SHARED)}")
    return 0


if __name__ == '__main__':
    sys.exit(main('--check' in sys.argv))
