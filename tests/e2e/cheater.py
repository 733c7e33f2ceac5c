"""A test-only defense that tries to cheat: it searches everything its context exposes (public
attributes, recursively; what its public methods return; the paths it is handed and their
parents' files) and records every tensor, text and path it finds, for the test to compare with the
ground truth. It then gives up and returns the backdoored model."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from backdoor_bench.defenses.base import Defense, Outcome


class Cheater(Defense):
    needs_clean = True
    found: dict = {}

    def __init__(self, name="cheater", **kw):
        super().__init__(name=name, **kw)

    def run(self, ctx):
        found = {"tensors": [], "texts": [], "paths": []}
        seen: set[int] = set()

        def walk(obj, depth=0):
            if id(obj) in seen or depth > 6:
                return
            seen.add(id(obj))
            if isinstance(obj, torch.Tensor):
                found["tensors"].append(obj.detach().cpu())
            elif isinstance(obj, str | Path):
                found["texts"].append(str(obj))
                if isinstance(obj, Path) or "/" in str(obj):
                    found["paths"].append(Path(obj))
            elif isinstance(obj, dict):
                for k, v in obj.items():
                    walk(k, depth + 1), walk(v, depth + 1)
            elif isinstance(obj, list | tuple | set):
                for v in obj:
                    walk(v, depth + 1)
            elif isinstance(obj, torch.nn.Module):
                for t in [*obj.state_dict().values(), *obj.__dict__.values()]:
                    walk(t, depth + 1)
            elif hasattr(obj, "__dict__") and not inspect.isroutine(obj) and not inspect.isclass(obj):
                for k, v in vars(obj).items():
                    if not k.startswith("_"):
                        walk(v, depth + 1)
            if obj is not None and not isinstance(obj, str | bytes | int | float | bool | torch.Tensor):
                found["texts"].append(repr(obj)[:2000])

        walk(ctx)
        # what the public methods return
        for model in (ctx.backdoored_model(), ctx.new_model(), ctx.ssl_backbone()):
            walk(model)
        state = ctx.stage_state("probe")
        walk(state)
        walk(state.load(default=None))
        walk(ctx.cached("probe", {"k": 1}, lambda: {"x": torch.zeros(1)}))
        ctx.figure("probe", lambda path: found["paths"].append(Path(path)))
        # the files next to every path it was handed, and their parents'
        for p in list(found["paths"]):
            for parent in [p, *p.parents][:4]:
                if parent.is_dir():
                    for f in parent.iterdir():
                        found["paths"].append(f)
                        if f.is_file() and f.stat().st_size < 1_000_000:
                            try:
                                found["texts"].append(f.read_text(errors="ignore"))
                            except OSError:
                                pass
        type(self).found = found
        return Outcome(model=ctx.backdoored_model())
