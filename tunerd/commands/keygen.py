"""`tunerd keygen`: CurveZMQ key pairs for the daemon and its clients (zmq.auth certificate files).

    tunerd keygen /etc/tunerd/curve --client camera1 --client tunerctl

writes, in DIR:
  server.key             the server's public key: give it to every client (--curve-server-key)
  server.key_secret      the server's key pair: [security] curve_secret_key_file (mode 0600)
  clients/NAME.key       each client's public key: [security] curve_client_keys_dir = DIR/clients
  private/NAME.key_secret  each client's key pair: give it to that client only (mode 0600)
An existing server key is kept (so clients can be added later) unless --new-server-key replaces it
(every client then needs the new server.key); an existing client key is an error unless --force
replaces it. Then restart tunerd: it reads the key directory when it starts.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import ConfigError

HELP = "write CurveZMQ key pairs for the daemon and its clients"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SERVER = "server"


def register(sub) -> None:
    p = sub.add_parser("keygen", help=HELP, description=HELP + ". See [security] in tunerd.toml.")
    p.add_argument("directory", metavar="DIR", help="where the keys go (created; e.g. /etc/tunerd/curve)")
    p.add_argument("--client", action="append", default=[], metavar="NAME",
                   help="also make a key pair for client NAME (repeatable)")
    p.add_argument("--force", action="store_true", help="replace existing client keys of the same names")
    p.add_argument("--new-server-key", action="store_true",
                   help="replace an existing server key pair (every client then needs the new server.key)")
    p.add_argument("--json", action="store_true", help="print the files written as JSON")
    p.set_defaults(func=run)


def _create(directory: Path, name: str) -> tuple[Path, Path]:
    """NAME.key (public, 0644) and NAME.key_secret (0600) in directory, each replaced atomically."""
    import zmq.auth

    directory.mkdir(parents=True, exist_ok=True)
    # NOTE: mkdtemp makes a 0700 directory: the secret is never readable by others, even briefly
    tmp = Path(tempfile.mkdtemp(prefix=".keygen-", dir=directory))
    try:
        public, secret = zmq.auth.create_certificates(tmp, name)
        os.chmod(public, 0o644)
        os.chmod(secret, 0o600)
        return (Path(shutil.move(public, directory / Path(public).name)),
                Path(shutil.move(secret, directory / Path(secret).name)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def generate(directory: str | os.PathLike, clients: list[str], *, force: bool = False,
             new_server_key: bool = False) -> dict:
    """Write the server key pair (kept if present, unless new_server_key) and one pair per client
    (an existing one is an error, unless force)."""
    root = Path(directory)
    for name in clients:
        if not NAME.match(name) or name == SERVER:
            raise ConfigError(f"bad client name {name!r}: letters, digits, '.', '_', '-' (not {SERVER!r})")
    if len(set(clients)) != len(clients):
        raise ConfigError("a client name is given twice")
    existing = [n for n in clients if (root / "clients" / f"{n}.key").exists()
                or (root / "private" / f"{n}.key_secret").exists()]
    if existing and not force:
        raise ConfigError(f"keys for {', '.join(existing)} already exist in {root} (use --force to replace them)")
    out: dict = {"directory": str(root), "clients": {}}
    server_public, server_secret = root / f"{SERVER}.key", root / f"{SERVER}.key_secret"
    if new_server_key or not (server_public.exists() and server_secret.exists()):
        server_public, server_secret = _create(root, SERVER)
        out["server_created"] = True
    else:
        out["server_created"] = False
    out["server_public"], out["server_secret"] = str(server_public), str(server_secret)
    (root / "clients").mkdir(parents=True, exist_ok=True)
    if clients:
        (root / "private").mkdir(mode=0o700, exist_ok=True)
        os.chmod(root / "private", 0o700)
    for name in clients:
        public, secret = _create(root / "private", name)
        allowed = Path(shutil.move(public, root / "clients" / public.name))
        out["clients"][name] = {"public": str(allowed), "secret": str(secret)}
    return out


def run(args) -> int:
    out = generate(args.directory, args.client, force=args.force, new_server_key=args.new_server_key)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    verb = "wrote" if out["server_created"] else "kept the existing"
    print(f"{verb} server key pair {out['server_secret']} (public key {out['server_public']})")
    for name, files in out["clients"].items():
        print(f"client {name}: key pair {files['secret']}, allowed by {files['public']}")
    print("\nIn tunerd.toml:\n[security]")
    print(f'curve_secret_key_file = "{out["server_secret"]}"')
    print(f'curve_client_keys_dir = "{Path(out["directory"]) / "clients"}"')
    print("\nClients: curve_server_key = the server's public key file, curve_keypair = their .key_secret file;"
          "\nmake server.key_secret readable by group tunerd only (chgrp tunerd; chmod 0640) and restart tunerd.")
    return 0
