"""Runs in the reference environment: a fork server for the reference scripts.

    python serve.py     then one JSON request per line on stdin, one JSON reply per line

Importing torch, SAELens, TransformerLens and the rest takes ~9 s, longer than most reference
scripts run, and a test session runs about twenty of them. This process imports them once and
forks a child per request; the child runs the script as `python script.py args...` would
(`__main__`, its own argv, cwd and sys.path[0]) with stdout and stderr in the files named, and
exits. A fork starts from the imported modules and nothing else: the server runs no torch
work, so the child's thread pools and random state start as a fresh interpreter's would.

Request: {"argv": [script, *args], "cwd": dir, "stdout": file, "stderr": file}
Replies: {"pid": child pid} at once, then {"rc": exit status} when the child ends.
"""

import json
import os
import runpy
import sys
import traceback
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import datasets  # noqa: F401
    import numpy  # noqa: F401
    import sae_lens  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401
    import transformer_lens  # noqa: F401
    import transformers  # noqa: F401


def run_child(request: dict) -> None:
    """In the forked child: become `python script args...` and run; never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        script = os.path.abspath(request["argv"][0])
        sys.argv = [script, *request["argv"][1:]]
        sys.path[0] = os.path.dirname(script)
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exit_:  # as the interpreter treats sys.exit(code)
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
