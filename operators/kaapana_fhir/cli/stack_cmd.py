"""``kaapana-fhir stack up|down|env``: the local stack of real servers (see :mod:`kaapana_fhir.dev.stack`)."""

from __future__ import annotations

import argparse
import logging
import sys

from kaapana_fhir.dev import stack as devstack

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="start/stop the local HAPI FHIR, Orthanc and S3 servers")
    p.add_argument("action", choices=["up", "down", "env", "build"],
                   help="up: start; down: stop by PID; env: print the env of a running stack; "
                        "build: build the HAPI server into the cache and print the jar path")
    p.add_argument("--state-dir", default=".stack", help="where PIDs, logs and data live (default .stack)")
    p.add_argument("--persistent", action="store_true", help="HAPI on a file-backed H2 in the state dir")
    p.add_argument("--services", default="hapi,orthanc,s3",
                   help="comma list of hapi,orthanc,s3,keycloak (keycloak: MinIO with Keycloak as OpenID provider)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "build":
        sys.stdout.write(f"{devstack.build_hapi()}\n")
        return 0
    if args.action == "up":
        stack = devstack.up(args.state_dir, services=tuple(args.services.split(",")), persistent=args.persistent,
                            progress=lambda m: log.info("%s", m))
        for k, v in stack.env().items():
            if not any(s in k for s in ("SECRET", "PASSWORD", "TOKEN")):  # `stack env` prints them for eval
                sys.stdout.write(f"export {k}={v}\n")
        return 0
    if args.action == "env":
        loaded = devstack.Stack.load(args.state_dir)
        if not loaded:
            log.error("no stack is running from %s; start it with `kaapana-fhir stack up`", args.state_dir)
            return 1
        for k, v in loaded.env().items():
            sys.stdout.write(f"export {k}={v}\n")
        return 0
    stopped = devstack.down(args.state_dir)
    log.info("stack %s", "stopped" if stopped else "was not running")
    return 0
