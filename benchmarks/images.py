"""Service images: layered rebuilds against a naive single-layer build of the same content, side by side in one run.

A project is made with `aiinfra new` (the Palmer penguins, multiclass) and trained with `dvc repro`. Then, on one machine
in one run:
- cold: `build_image(cache=False)`: every layer but the base (built once per machine, not counted) made anew; then one
  build with nothing changed, not timed (buildah may take the dependencies from an older cached chain, where this
  project's code layer is not yet);
- model rebuild: a new version promoted, then `build_image`: the model layer only (median of --rounds promotions);
- code rebuild: the project's code changed (its settings.ini), then `build_image`: the code and model layers;
- naive: the same content (the same context: lock, wheels, code, models, configuration) as one `RUN` layer, built without
  cache, which is what every change costs when the image is not layered.

Goals (issue 13): a rebuild after a promotion <= 20 s here and <= 0.2x the naive build. The phases of a model rebuild (the
context written, buildah, reading the image back) say where the time goes. The last line is one JSON object.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

BIN = Path(sys.executable).parent


def sh(cmd, cwd, env):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode: sys.exit(f"{cmd[0]} failed: {r.stderr[-2000:]}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rounds', type=int, default=3, help='promotions timed (the median is kept)')
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix='aiinfra-bench-images.'))
    os.environ.update(AIINFRA_HOME=str(work/'home'), AIINFRA_DB_URL=f"sqlite:///{work/'store.db'}", DVC_NO_ANALYTICS='1',
                      PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    from aiinfra_nb.data.sources import package_file
    from aiinfra_nb.images.build import build_context, project_service
    from aiinfra_nb.images.base import ensure_base
    from aiinfra_nb.images.tools import inspect_image, tool, tool_env
    from aiinfra_nb.images.build import build_image
    env, proj = dict(os.environ), work/'bench'
    sh([BIN/'aiinfra', 'new', 'bench', '--data', package_file('palmerpenguins', 'data/penguins.csv'), '--target', 'species', '--dir', proj], work, env)
    sh(['dvc', 'repro'], proj, env)
    t = time.monotonic(); base, built = ensure_base(); base_s = time.monotonic() - t
    print(f"base image {base}: {'built in %.1f s' % base_s if built else 'cached'}", file=sys.stderr)

    def build(**kw):
        t = time.monotonic(); b = build_image(proj, **kw); b['wall_s'] = time.monotonic() - t
        return b

    def promote():
        code = ("import torch\nfrom aiinfra_nb.models.registry import Registry\nr = Registry(); m, meta = r.load('bench', stage='production')\n"
                "with torch.no_grad():\n    for p in m.parameters(): p.add_(0.01)\n"
                "v = r.save(m, 'bench', features=meta['features'], preprocessing=meta['preprocessing'], data_version=meta['data_version'])\n"
                "r.promote('bench', v['version'])")
        sh([sys.executable, '-c', code], proj, env)

    cold = build(cache=False)
    build()  # settles the cache: buildah may match the dependencies to an older cached chain, whose child has no code layer of this project yet
    model = []
    for _ in range(args.rounds):
        promote(); b = build()
        assert [l['layer'] for l in b['layers'] if not l['reused']] == ['model'], b['layers']
        model.append(b)
    (proj/'settings.ini').write_text((proj/'settings.ini').read_text() + "\n[service]\nmax_rows = 5000\n")
    code = build()
    assert [l['layer'] for l in code['layers'] if not l['reused']] == ['code', 'model'], code['layers']

    # naive: the same context as one layer, no cache
    with __import__('contextlib').chdir(proj):
        ctx = build_context(project_service(proj), base, inspect_image(base)['Docker']['config']['Labels']['io.aiinfra.python'])
    layered = (ctx/'Containerfile').read_text().splitlines()
    config = [l for l in layered if l.split(' ')[0] in ('ENV', 'WORKDIR', 'EXPOSE', 'HEALTHCHECK', 'USER', 'ENTRYPOINT')]
    run = ("RUN --mount=type=bind,source=.,target=/ctx python3 -m venv /opt/venv && /opt/venv/bin/pip install --quiet --no-index --no-deps "
           "--no-cache-dir --disable-pip-version-check --find-links /ctx/wheels -r /ctx/requirements.lock && cp -a /ctx/code/. / "
           "&& mkdir -p /srv/models && cp -a /ctx/models/. /srv/models/ && chown -R 10001:10001 /srv/models")
    (ctx/'Containerfile.naive').write_text('\n'.join([f"FROM {base}", run, *config, '']))
    t = time.monotonic()
    tool('buildah', 'build', '--no-cache', '--format', 'docker', '-f', ctx/'Containerfile.naive', '-t', 'localhost/aiinfra/bench-naive:latest', ctx, timeout=1800)
    naive_s = time.monotonic() - t
    n_layers = len(json.loads(inspect_image('localhost/aiinfra/bench-naive:latest')['Manifest'])['layers'])

    model_s = statistics.median(b['wall_s'] for b in model)
    phases = {k: statistics.median(b['phases'][k] for b in model) for k in model[0]['phases']}
    print(f"cold {cold['wall_s']:.1f} s ({cold['mb']:,.0f} MB), model rebuild {model_s:.1f} s (rounds: "
          f"{', '.join('%.1f' % b['wall_s'] for b in model)}), code rebuild {code['wall_s']:.1f} s, naive {naive_s:.1f} s "
          f"({n_layers} layers: the base and one)", file=sys.stderr)
    print("where a model rebuild's time goes: " + ', '.join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])),
          file=sys.stderr)
    for ref in [b['image'] for b in (cold, *model, code)] + ['localhost/aiinfra/bench-naive:latest']:
        subprocess.run(['buildah', 'rmi', ref], capture_output=True, env=tool_env())
    print(json.dumps({'benchmark': 'images', 'cold_s': round(cold['wall_s'], 1), 'model_rebuild_s': round(model_s, 2),
                      'code_rebuild_s': round(code['wall_s'], 2), 'naive_s': round(naive_s, 1),
                      'model_rebuild_ratio': round(model_s / naive_s, 3)}))


if __name__ == '__main__':
    main()
