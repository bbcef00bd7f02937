"""Who may do what: the app's sharing policy, in one place.

Two modes. **Local** (the default: 127.0.0.1, no login): one person at their own machine, everything allowed, as
always. **Shared** (on with ``--share``, ``--auth``/``--auth-file`` or a host other than loopback, unless
``--trust-users``): the logged-in users are strangers. They reach no network address, file or model the host did
not offer, and cannot stall or spoil each other's work:

* request bodies are size-limited before they are read, and checked after the login, off the event loop
  (``ui/guard.py``); failed logins are rate-limited per client address; each user has a share of the queue;
* models come from the catalog, the host's ``--model`` list and ``--model-dir`` folders only (a folder is named
  by its absolute normalized path, so ``x/``, ``x//`` and ``./x`` are one model); no hub downloads unless
  ``--allow-downloads``; refusals never show host paths;
* endpoints come from the host; adding one in the UI needs ``--allow-user-endpoints``, and then only public
  addresses are called (checked after DNS resolution, before every call; no redirects followed; replies bounded
  and never echoed beyond the status code);
* replies have a ``max_new_tokens`` ceiling and a total deadline, and each user at most
  ``replies_per_user`` replies generating at once;
* a model another session is replying with is not unloaded under it.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import InvalidParameterError, PlaygroundError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class NotAllowedError(PlaygroundError):
    """The sharing policy refuses this (shared mode)."""


@dataclass(frozen=True)
class SharingPolicy:
    shared: bool = False
    why: str = "local use: 127.0.0.1 without a login"
    allow_user_endpoints: bool = True
    allow_downloads: bool = True
    host_models: frozenset[str] = frozenset()           # what the host named with --model
    model_dirs: tuple[str, ...] = ()                    # --model-dir, absolute and normalized
    max_body_bytes: int = 32 * 2 ** 20                  # a JSON request body, read by the guard
    max_upload_bytes: int | None = None                 # gradio's max_file_size
    max_new_tokens: int | None = None                   # ceiling for one reply
    reply_deadline_s: float | None = None               # a reply's whole time, endpoints included
    replies_per_user: int | None = None                 # replies generating at once per user
    queued_per_user: int | None = None                  # requests waiting or running per user
    login_failures: int | None = None                   # failed logins per client address ...
    login_window_s: float = 60.0                        # ... within this window, then HTTP 429
    max_endpoint_reply_bytes: int | None = None
    _active: Counter = field(default_factory=Counter, compare=False, repr=False)
    _active_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def local(cls) -> "SharingPolicy":
        return cls()

    @classmethod
    def for_launch(cls, *, host: str = "127.0.0.1", share: bool = False, logins: bool = False,
                   trust_users: bool = False, allow_user_endpoints: bool = False, allow_downloads: bool = False,
                   host_models=(), model_dirs=(), max_new_tokens: int = 1024, reply_deadline_s: float = 180.0,
                   replies_per_user: int = 1, queued_per_user: int = 4) -> "SharingPolicy":
        reasons = [r for r, on in (("--share", share), ("a login (--auth/--auth-file)", logins),
                                   (f"--host {host}", host not in LOOPBACK_HOSTS)) if on]
        dirs = tuple(os.path.abspath(Path(d).expanduser()) for d in model_dirs)
        if not reasons or trust_users:
            why = ("--trust-users: " + ", ".join(reasons) + " without the shared-mode limits") if reasons else \
                cls.why
            return cls(shared=False, why=why, host_models=frozenset(host_models), model_dirs=dirs)
        return cls(shared=True, why=", ".join(reasons), allow_user_endpoints=allow_user_endpoints,
                   allow_downloads=allow_downloads, host_models=frozenset(host_models), model_dirs=dirs,
                   max_body_bytes=2 * 2 ** 20, max_upload_bytes=2 * 2 ** 20, max_new_tokens=max_new_tokens,
                   reply_deadline_s=reply_deadline_s, replies_per_user=replies_per_user,
                   queued_per_user=queued_per_user, login_failures=5, max_endpoint_reply_bytes=4 * 2 ** 20)

    def banner(self) -> list[str]:
        if not self.shared:
            return [f"* Mode: local ({self.why}): every model, folder, download and endpoint is allowed"]
        dirs = f" and the folders under {', '.join(self.model_dirs)}" if self.model_dirs else ""
        return [f"* Mode: SHARED ({self.why}); --trust-users turns the limits off",
                f"  models: the catalog, --model{dirs}; hub downloads "
                f"{'allowed (--allow-downloads)' if self.allow_downloads else 'off'}",
                f"  endpoints: the host's; added by users: "
                f"{'public addresses only (--allow-user-endpoints)' if self.allow_user_endpoints else 'off'}",
                f"  per reply: at most {self.max_new_tokens} new tokens and {self.reply_deadline_s:.0f} s; per "
                f"user: {self.replies_per_user} reply at a time, {self.queued_per_user} requests queued; request "
                f"bodies up to {self.max_body_bytes // 2 ** 20} MB; {self.login_failures} failed logins per "
                f"{self.login_window_s:.0f} s per address"]

    # -- models ------------------------------------------------------------------------------------------------
    def model_name(self, name: str) -> str:
        """The name to load ``name`` under: a folder by its normalized path (one folder is one model), anything else
        as given. In shared mode, raises ``NotAllowedError`` for what the host did not offer (never saying
        whether a path exists)."""
        from .catalog import CATALOG

        name = (name or "").strip()
        if not name or name in CATALOG or name.startswith("random:"):
            return name
        folder = _existing_dir(name)
        if not self.shared:
            return str(folder) if folder is not None else name
        if name in self.host_models:
            return str(folder) if folder is not None else name
        if folder is not None and any(_inside(folder, d) for d in self.model_dirs):
            return str(folder)
        looks_like_path = name.startswith((".", "/", "~")) or "\\" in name or name.count("/") != 1
        if not looks_like_path and self.allow_downloads:
            return name
        raise NotAllowedError(f"{_shown(name)} is not offered on this shared app: pick a model from the list "
                              f"(the host can add models with --model or --model-dir"
                              f"{'' if looks_like_path else ', or allow hub downloads with --allow-downloads'})")

    def offered_models(self) -> list[str]:
        """Models to list in the pickers besides the catalog: the host's and those in its model folders."""
        names = sorted(self.host_models)
        for d in self.model_dirs:
            try:
                names += sorted(str(p) for p in Path(d).iterdir() if (p / "config.json").is_file())
            except OSError:
                continue
        return names

    # -- replies -----------------------------------------------------------------------------------------------
    def check_params(self, params):
        """``params`` within the shared ceilings (InvalidParameterError naming the limit otherwise)."""
        if self.max_new_tokens is not None and params.max_new_tokens > self.max_new_tokens:
            raise InvalidParameterError(f"max_new_tokens is at most {self.max_new_tokens} on this shared app "
                                        f"(asked for {params.max_new_tokens})")
        return params

    @contextmanager
    def reply_slot(self, user: str):
        """Held while one of ``user``'s replies generates; refuses beyond ``replies_per_user``."""
        if self.replies_per_user is None:
            yield
            return
        with self._active_lock:
            if self._active[user] >= self.replies_per_user:
                raise NotAllowedError(f"you already have {self._active[user]} reply generating: wait for it or "
                                      f"stop it (on this shared app each user has {self.replies_per_user} at a "
                                      f"time)")
            self._active[user] += 1
        try:
            yield
        finally:
            with self._active_lock:
                self._active[user] -= 1
                if self._active[user] <= 0:
                    del self._active[user]

    # -- endpoints ---------------------------------------------------------------------------------------------
    def check_user_endpoint(self) -> None:
        if self.shared and not self.allow_user_endpoints:
            raise NotAllowedError("adding endpoints is off on this shared app: the host offers its endpoints "
                                  "(--endpoint), or allows users' own with --allow-user-endpoints")



def _existing_dir(name: str) -> Path | None:
    """An existing folder by its absolute, normalized path (``x/``, ``x//``, ``./x`` and ``y/../x`` are one).
    Normalized by its text, not through symlinks: a link the host put in its model folder stays offered."""
    try:
        p = Path(os.path.abspath(Path(name).expanduser()))
        return p if p.is_dir() else None
    except (OSError, ValueError):
        return None


def _inside(folder: Path, root: str) -> bool:
    return folder != Path(root) and folder.is_relative_to(root) and (folder / "config.json").is_file()


def _shown(name: str) -> str:
    """A user's model name, shortened, for a message."""
    return repr(name[:60] + ("…" if len(name) > 60 else ""))


# ---- public addresses only -------------------------------------------------------------------------------------
def check_public_url(url: str) -> None:
    """Refuse a URL whose host resolves to anything but public internet addresses (loopback, private, link-local,
    multicast, reserved, unspecified, ...), checked on every address DNS gives, after resolution: ``localhost``,
    ``2130706433`` and ``0x7f.1`` are all 127.0.0.1. Raises ``NotAllowedError`` with a fixed reason."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError, UnicodeError):
        raise NotAllowedError(f"{host[:80]!r} does not resolve to an address") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if getattr(address, "ipv4_mapped", None):
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise NotAllowedError(f"{host[:80]!r} is not a public internet address: this shared app calls only "
                                  f"public servers for endpoints its users add")


__all__ = ["SharingPolicy", "NotAllowedError", "check_public_url"]
