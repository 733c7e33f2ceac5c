"""Many command lines through their real entry points, in one fresh Python process.

    python tests/e2e/entry_points.py CASES.json OUT.json

CASES.json: a list of `{"id", "script", "argv", "cwd"}`; OUT.json: `{id: {"returncode",
"stdout", "stderr"}}`. Each case runs as `python <script> <argv...>` would: the script as
`__main__` (`runpy.run_path`) with `sys.argv` and `sys.path[0]` set as the interpreter sets them,
in a child forked from this process, so the seconds of importing torch, Lightning and Hydra are
paid once for all cases while each case starts from a state no other case touched. The exit
status follows Python's rules (`sys.exit(n)`, 1 for an uncaught exception after its traceback).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import traceback
from pathlib import Path


def _child(script: str, argv: list[str], cwd: str, out: int, err: int) -> None:
    """In the forked child: run `script` as `__main__`, output to the two descriptors; never returns."""
    code = 1
    try:
        os.dup2(out, 1), os.dup2(err, 2)
        sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
        os.chdir(cwd)
        sys.argv = [script, *argv]
        sys.path[0] = str(Path(script).resolve().parent)
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:  # sys.exit("message"): Python prints it and exits 1
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)


def run_case(script: str, argv: list[str], cwd: str) -> dict:
    """`python script *argv` in `cwd`, in a forked child: returncode, stdout, stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(script, argv, cwd, out.fileno(), err.fileno())
        _, status = os.waitpid(pid, 0)
        out.seek(0), err.seek(0)
        return {
            "returncode": os.waitstatus_to_exitcode(status),
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def main(argv: list[str]) -> int:
    cases_path, out_path = argv
    import backdoor_bench.pipeline  # noqa: F401  (torch, Lightning, Hydra: imported once, here)

    cases = json.loads(Path(cases_path).read_text())
    results = {c["id"]: run_case(c["script"], c["argv"], c["cwd"]) for c in cases}
    Path(out_path).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
