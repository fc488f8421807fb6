"""Where a benchmark's time goes: `top_costs(fn)` runs `fn` under cProfile and sums its own time (tottime) by where the
code lives: a Python function by its package (`pytorch_lightning`, `aiinfra_nb.train`, `starlette`), a C function by
its name (`torch backward`, `torch linear`). The biggest few are what the next engineer looks at first."""
import cProfile, pstats, re


def _where(file: str, name: str) -> str:
    "A cost's label: the package of a Python file, or the name of a built-in"
    if file == '~':  # a C function: '{built-in method torch._C._nn.linear}', "{method 'run_backward' of 'torch._C._EngineBase' objects}"
        m = re.search(r"'(\w+)' of '([\w.]+)", name) or re.search(r'method ([\w.]+)', name)
        if not m: return name.strip('{}')
        if m.lastindex == 2: return f"{m.group(2).split('.')[0]} {m.group(1).strip('_')}"
        owner, _, fn = m.group(1).rpartition('.')
        return f"{owner.split('.')[0]} {fn.strip('_')}" if owner else fn
    parts = re.split(r'site-packages/|/work/main/|/lib/python3\.\d+/', file)[-1].split('/')
    if parts[0] == 'aiinfra_nb' and len(parts) > 2: return f"aiinfra_nb.{parts[1]}"
    return parts[0].removesuffix('.py') if parts else file


def top_costs(fn, n: int = 3, skip: tuple = ()) -> list[tuple[str, float]]:
    "The `n` biggest costs of running `fn()`: [(where, seconds of its own time)], leaving out the harness's own (`skip`)"
    prof = cProfile.Profile()
    prof.enable()
    try: fn()
    finally: prof.disable()
    spent = {}
    for (file, _, name), (_, _, tottime, _, _) in pstats.Stats(prof).stats.items():
        key = _where(file, name)
        spent[key] = spent.get(key, 0.0) + tottime
    return sorted(((k, v) for k, v in spent.items() if k not in skip), key=lambda kv: -kv[1])[:n]


def say(costs: list[tuple[str, float]]) -> str:
    return ', '.join(f"{k} {v:.2f} s" for k, v in costs)
