"""Download links for admins: the export handler (which checks the admin role) grants a link
with a random token, bound to the admin's login cookie and short-lived; the download route
serves it only to that same login, re-checks the role, and builds the file at that moment.
No export ever lies under a path an annotator could guess or be given."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

LINK_SECONDS = 10 * 60
LOGIN_COOKIE_PREFIX = "access-token"  # Gradio's login cookies start with this


def login_key(cookies: Mapping[str, str]) -> str | None:
    """A digest of the request's login token, or None when it carries none. Gradio sets the
    token twice (a Secure cookie and one for plain http): the values, not the names, count."""
    logins = sorted({v for k, v in cookies.items() if k.startswith(LOGIN_COOKIE_PREFIX)})
    if not logins:
        return None
    return hashlib.sha256(repr(logins).encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    user: str
    login: str
    expires: float


class DownloadGrants:
    def __init__(self, seconds: float = LINK_SECONDS):
        self.seconds = seconds
        self._grants: dict[str, Grant] = {}
        self._lock = threading.Lock()

    def grant(self, user: str, cookies: Mapping[str, str]) -> str:
        login = login_key(cookies)
        if login is None:
            raise PermissionError("no login cookie on the request")
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self._grants = {t: g for t, g in self._grants.items() if g.expires > now}
            self._grants[token] = Grant(user, login, now + self.seconds)
        return token

    def holder(self, token: str, cookies: Mapping[str, str]) -> str | None:
        """The user the token was granted to, when it is live and the request is that same login."""
        with self._lock:
            grant = self._grants.get(token)
        login = login_key(cookies)
        if grant is None or grant.expires <= time.time() or login is None:
            return None
        return grant.user if secrets.compare_digest(grant.login, login) else None
