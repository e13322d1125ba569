"""One DVC process that runs ``dvc`` commands as they are asked for, in its working folder: a pipeline run asks
DVC a dozen times (a status, then a commit per stage), and a new process per command spent ~0.7 s of CPU importing
DVC for ~0.2 s of work. Started by ``flows.project.dvc_processes``; a request is a JSON line on stdin (the
command's arguments), the reply a JSON line on stdout (``{"code": 0, "stdout": "...", "stderr": "..."}``) with
what the command printed, as ``dvc`` on the command line would have. It ends when its stdin closes.

Run as a script (``python flows/dvc_process.py``): the standard library and DVC only.
"""
import json
import os
import signal
import sys
import tempfile


def run_command(main, args: list[str]) -> dict:
    """``main(args)`` with file descriptors 1 and 2 caught: DVC's loggers hold the streams they were made with."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            code = main(args)
        except SystemExit as exit_:  # argparse's --help and usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in zip((1, 2), saved):
                os.dup2(original, fd)
                os.close(original)
        out.seek(0)
        err.seek(0)
        return {"code": code, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


def serve() -> None:
    # Ctrl-C reaches the whole process group: the run that started this process decides, and closes its stdin
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from dvc.cli import main

    for line in sys.stdin:
        print(json.dumps(run_command(main, json.loads(line))), flush=True)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))  # flows/: its modules would shadow others of the same name
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    serve()
