"""CurveZMQ on the daemon's sockets: encryption, and authentication of clients by public key.

``configure_curve_server(ctx, sock, secret_key_file, client_keys_dir)`` makes ``sock`` a CURVE
server with the key pair in ``secret_key_file`` (a zmq certificate file, as ``tunerd keygen``
writes) and starts, once per context, a ZAP handler (zmq.auth's ThreadAuthenticator) that allows
only the client public keys found in ``client_keys_dir`` (``*.key`` certificate files), or any
client key when it is None. A client with another key, or without CURVE, completes no handshake:
its messages never reach the server and it gets no reply.

The handler is a thread holding sockets of ``ctx``: ``stop_curve_server(ctx)`` must run before
``ctx.term()`` (which would otherwise wait for it for ever). The server does so in ``close``.
The key directory is read when the daemon starts; a restart picks up added or removed keys.
"""
from __future__ import annotations

import logging
import os

import zmq

from ..errors import ConfigError

log = logging.getLogger(__name__)

ZAP_DOMAIN = b"tunerd"
_authenticators: dict[int, tuple[zmq.Context, object]] = {}   # id(ctx) -> (ctx, ThreadAuthenticator)


def load_server_keypair(secret_key_file: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a zmq certificate file; ConfigError when it holds no secret."""
    import zmq.auth

    path = os.fspath(secret_key_file)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the CURVE secret key file {path}: {err}") from err
    if not public or not secret:
        raise ConfigError(f"{path} holds no CURVE secret key (use the .key_secret file `tunerd keygen` wrote)")
    return public, secret


def load_client_keys(client_keys_dir: str | os.PathLike) -> dict[bytes, bool]:
    """The public keys of the ``*.key`` certificates in ``client_keys_dir`` (ConfigError if unreadable)."""
    import zmq.auth

    path = os.fspath(client_keys_dir)
    if not os.path.isdir(path):
        raise ConfigError(f"curve_client_keys_dir {path} is not a directory")
    try:
        return zmq.auth.load_certificates(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the CURVE client keys in {path}: {err}") from err


def _authenticator(ctx: zmq.Context, client_keys_dir: str | None):
    """The context's ZAP handler, started on first use (one per context: it binds the ZAP endpoint)."""
    from zmq.auth import CURVE_ALLOW_ANY
    from zmq.auth.thread import ThreadAuthenticator

    entry = _authenticators.get(id(ctx))
    if entry is not None and entry[0] is ctx:
        return entry[1]
    keys = load_client_keys(client_keys_dir) if client_keys_dir else None
    auth = ThreadAuthenticator(ctx, log=logging.getLogger(f"{__name__}.zap"))
    auth.start()
    if keys is None:
        auth.configure_curve(domain=ZAP_DOMAIN.decode(), location=CURVE_ALLOW_ANY)
        log.info("CURVE on: any client that knows the server's public key may connect")
    else:
        auth.configure_curve(domain=ZAP_DOMAIN.decode(), location=os.fspath(client_keys_dir))
        if not keys:
            log.warning("CURVE on, but %s holds no client key (*.key): no client can connect", client_keys_dir)
        else:
            log.info("CURVE on: %d client key(s) allowed (from %s)", len(keys), client_keys_dir)
    _authenticators[id(ctx)] = (ctx, auth)
    return auth


def configure_curve_server(ctx: zmq.Context, sock: zmq.Socket, secret_key_file: str | os.PathLike,
                           client_keys_dir: str | os.PathLike | None) -> None:
    """Make ``sock`` (before it binds) a CURVE server that admits only the allowed client keys."""
    public, secret = load_server_keypair(secret_key_file)
    _authenticator(ctx, os.fspath(client_keys_dir) if client_keys_dir else None)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    # NOTE: a ZAP domain makes libzmq consult the handler for this socket whatever its version's
    # defaults (ZMQ_ZAP_ENFORCE_DOMAIN); zmq.auth matches domains exactly ("*" is no wildcard there).
    sock.zap_domain = ZAP_DOMAIN


def stop_curve_server(ctx: zmq.Context) -> None:
    """Stop the context's ZAP handler, if any (before ``ctx.term()``); idempotent."""
    entry = _authenticators.pop(id(ctx), None)
    if entry is not None and entry[0] is ctx:
        entry[1].stop()
