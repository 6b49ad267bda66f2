"""Who may use the web app: Gradio's login from `--auth USER:PASS` and `--auth-file`, and a warning when a
server is reachable from other machines without one."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Sequence

from guidance.errors import InvalidInputError

Credentials = list[tuple[str, str]]


def parse_credential(text: str, where: str) -> tuple[str, str]:
    """`USER:PASS` as (user, password), refused in one line naming `where` it came from."""
    user, colon, password = text.strip().partition(":")
    if not colon or not user.strip() or not password:
        raise InvalidInputError(f"{where}: expected USER:PASS with a non-empty user and password")
    return user.strip(), password


def read_credentials(auth: Sequence[str] = (), auth_file: str | Path | None = None) -> Credentials:
    """The logins from `--auth` values and from an `--auth-file` of USER:PASS lines (# comments)."""
    credentials = [parse_credential(text, "--auth") for text in auth]
    if auth_file is not None:
        try:
            lines = Path(auth_file).expanduser().read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidInputError(f"cannot read --auth-file {auth_file} ({type(error).__name__}); "
                                    "give a text file of USER:PASS lines") from None
        credentials += [parse_credential(line, f"{auth_file} line {number}") for number, line in enumerate(lines, 1)
                        if line.strip() and not line.lstrip().startswith("#")]
        if not credentials:
            raise InvalidInputError(f"--auth-file {auth_file} holds no USER:PASS line")
    return credentials


def is_loopback(host: str) -> bool:
    """Whether an address to listen on is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to any interface
        return False


def exposure_warning(host: str, share: bool, credentials: Credentials) -> str | None:
    """A warning when the app is reachable from other machines (non-loopback address or --share) with no login."""
    if credentials or (is_loopback(host) and not share):
        return None
    where = "a public gradio.live link (--share)" if share else f"{host}, reachable from other machines"
    return (f"warning: serving on {where} without a login; anyone who reaches it can run models on this machine. "
            "Add --auth USER:PASS or --auth-file FILE")
