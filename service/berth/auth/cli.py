"""The auth parts of the ``berth`` command line: ``serve`` flags, ``berth user add/remove/list``
and ``berth keygen``. ``berth.cli`` calls ``add_serve_flags`` and ``add_commands``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

# flag attribute → settings path, merged into berth.cli.SERVE_FLAGS
SERVE_FLAGS: dict[str, str] = {
    "auth": "auth.mode",
    "htpasswd_file": "auth.htpasswd_file",
    "token_key": "auth.token.signing_key_file",
    "policy": "auth.policy_file",
    "tls_cert": "http.tls.cert_file",
    "tls_key": "http.tls.key_file",
}


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("access control and TLS (see docs/auth.md)")
    group.add_argument(
        "--auth",
        choices=["none", "htpasswd", "token"],
        help="authentication mode (auth.mode; default none: anonymous)",
    )
    group.add_argument(
        "--htpasswd-file", metavar="FILE", help="bcrypt htpasswd file (auth.htpasswd_file)"
    )
    group.add_argument(
        "--token-key",
        metavar="FILE",
        help="private key that signs tokens of the built-in /auth/token endpoint "
        "(auth.token.signing_key_file; `berth keygen` writes one)",
    )
    group.add_argument(
        "--policy", metavar="FILE", help="YAML file with access rules (auth.policy_file)"
    )
    group.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (http.tls.cert_file)")
    group.add_argument("--tls-key", metavar="FILE", help="PEM private key (http.tls.key_file)")


def _htpasswd_path(args: argparse.Namespace) -> Path:
    if args.htpasswd_file:
        return Path(args.htpasswd_file)
    from ..config import load_settings

    configured = load_settings(args.config).auth.htpasswd_file
    if configured is None:
        raise ValueError("name the htpasswd file: --htpasswd-file FILE (or auth.htpasswd_file)")
    return Path(configured)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ValueError("no terminal: pass the password on standard input with --password-stdin")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat: ") != first:
        raise ValueError("the passwords differ")
    return first


def cmd_user_add(args: argparse.Namespace) -> int:
    from .htpasswd import set_user

    path = _htpasswd_path(args)
    new = set_user(path, args.name, _read_password(args), args.cost)
    print(f"{'added' if new else 'updated'} {args.name} in {path}")
    return 0


def cmd_user_remove(args: argparse.Namespace) -> int:
    from .htpasswd import remove_user

    path = _htpasswd_path(args)
    if not remove_user(path, args.name):
        print(f"berth: no user {args.name!r} in {path}", file=sys.stderr)
        return 1
    print(f"removed {args.name} from {path}")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    from .htpasswd import parse_htpasswd

    path = _htpasswd_path(args)
    for user in sorted(parse_htpasswd(path.read_bytes()) if path.exists() else {}):
        print(user)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    import json

    from .keys import generate_private_key, load_signing_key, private_pem

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"{out} exists (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    pem = private_pem(generate_private_key(args.type, args.bits))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(out, 0o600)
    signing = load_signing_key(out)
    if args.jwks:
        Path(args.jwks).write_text(json.dumps(signing.jwks(), indent=2) + "\n")
    print(f"wrote {signing.algorithm} key {out} (kid {signing.kid})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    user = sub.add_parser("user", help="manage users of the htpasswd file")
    user_sub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="YAML configuration (auth.htpasswd_file)")
        p.add_argument("--htpasswd-file", metavar="FILE", help="the htpasswd file to edit")

    add = user_sub.add_parser(
        "add",
        help="add a user or change its password (bcrypt)",
        description="Add NAME to the htpasswd file, or change its password. The password is "
        "asked for on the terminal, or read from standard input with --password-stdin.",
    )
    add.add_argument("name", metavar="NAME")
    common(add)
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.add_argument("--cost", type=int, default=11, help="bcrypt cost (default 11)")
    add.set_defaults(func=cmd_user_add)

    remove = user_sub.add_parser("remove", help="remove a user")
    remove.add_argument("name", metavar="NAME")
    common(remove)
    remove.set_defaults(func=cmd_user_remove)

    list_ = user_sub.add_parser("list", help="list user names")
    common(list_)
    list_.set_defaults(func=cmd_user_list)

    keygen = sub.add_parser(
        "keygen",
        help="write a token signing key",
        description="Write a private key for the built-in token endpoint (auth.token."
        "signing_key_file / --token-key): EC P-256 (ES256, the default) or RSA (RS256).",
    )
    keygen.add_argument("--out", required=True, metavar="FILE", help="private key (PEM, 0600)")
    keygen.add_argument("--type", choices=["ec", "rsa"], default="ec", help="key type")
    keygen.add_argument("--bits", type=int, default=3072, help="RSA key size (default 3072)")
    keygen.add_argument("--jwks", metavar="FILE", help="also write the public key as a JWKS")
    keygen.add_argument("--force", action="store_true", help="replace an existing file")
    keygen.set_defaults(func=cmd_keygen)


__all__ = ["SERVE_FLAGS", "add_commands", "add_serve_flags"]
