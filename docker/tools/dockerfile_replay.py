"""Replay a Dockerfile's COPY/WORKDIR/ENV/RUN steps on this machine (no Docker engine needed).

Used by ``.ci/check-processing-image.sh`` to prove that the processing image's pip/python steps work on
Python 3.12: the build context is the Dockerfile's folder (as in Kaapana's build), container paths are
mapped under ``--root`` (``/kaapana/app`` → ``<root>/kaapana/app``), and each ``RUN`` runs with ``bash -e``
with ``--venv``'s ``bin`` first on PATH (so ``python3``/``pip`` are the venv's, as ``/opt/venv`` is in
``local-only/base-python-cpu``). ``FROM`` is not pulled: the caller prepares the venv as the base layer.
Commands that need the OS (``apt-get``) are refused: the processing image must not rely on them.

Prints the exec-form ``ENTRYPOINT`` + ``CMD`` (JSON) of the image on the last line, for the caller to run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _host(path: str, root: Path, workdir: str) -> Path:
    full = path if path.startswith("/") else f"{workdir.rstrip('/')}/{path}"
    return root / full.lstrip("/")


def replay(dockerfile: Path, root: Path, venv: Path, *, pip_cache: bool = False) -> list[str]:
    context = dockerfile.parent
    workdir = "/"
    env = dict(os.environ)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    entrypoint: list[str] = []
    cmd: list[str] = []
    for word, args in instructions(dockerfile):
        if word in ("FROM", "LABEL", "EXPOSE", "USER", "ARG", "VOLUME"):
            continue
        if word == "WORKDIR":
            workdir = args if args.startswith("/") else f"{workdir.rstrip('/')}/{args}"
            _host(workdir, root, "/").mkdir(parents=True, exist_ok=True)
        elif word == "ENV":
            key, _, value = args.replace("=", " ", 1).partition(" ")
            env[key] = value.strip().strip('"')
        elif word == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            dest = parts[-1]
            for src in parts[:-1]:
                s = context / src
                if not s.exists():
                    raise SystemExit(f"{dockerfile}: COPY {src}: not in the build context {context}")
                d = _host(dest, root, workdir)
                if s.is_dir():
                    shutil.copytree(s, d, dirs_exist_ok=True)
                else:
                    if dest.endswith("/"):
                        d.mkdir(parents=True, exist_ok=True)
                        d = d / s.name
                    d.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(s, d)
        elif word == "RUN":
            if "apt-get" in args or "apt " in args:
                raise SystemExit(f"{dockerfile}: RUN {args[:60]}...: OS packages are not allowed in this image")
            command = args.replace(" /kaapana/", f" {root}/kaapana/")
            if pip_cache:  # CI speed: reuse pip's wheel cache (the image build itself keeps --no-cache-dir)
                command = command.replace(" --no-cache-dir", "")
            t0 = time.monotonic()
            sys.stderr.write(f"::: RUN {args}\n")
            proc = subprocess.run(["bash", "-eo", "pipefail", "-c", command], cwd=_host(workdir, root, "/"),
                                  env=env, check=False)
            sys.stderr.write(f"::: RUN exit {proc.returncode} after {time.monotonic() - t0:.1f}s\n")
            if proc.returncode != 0:
                raise SystemExit(f"{dockerfile}: RUN failed with exit code {proc.returncode}: {args}")
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(args)
        elif word == "CMD":
            cmd = json.loads(args)
        else:
            raise SystemExit(f"{dockerfile}: instruction {word} is not supported by the replay")
    return entrypoint + cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dockerfile", type=Path)
    ap.add_argument("--root", type=Path, required=True, help="folder standing in for the image's /")
    ap.add_argument("--venv", type=Path, required=True, help="venv standing in for /opt/venv of the base image")
    ap.add_argument("--pip-cache", action="store_true", help="drop --no-cache-dir (reuse pip's cache)")
    args = ap.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    command = replay(args.dockerfile.resolve(), args.root.resolve(), args.venv.resolve(), pip_cache=args.pip_cache)
    sys.stdout.write(json.dumps(command) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
