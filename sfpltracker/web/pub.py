"""``/tr/v1/pub/...``: files from ``StaticDirectory``, each request tracked as a server event.

Only regular files whose real path (symlinks resolved) lies inside the directory are served;
anything else is a 404, so ``..``, encoded ``%2e%2e`` and symlinks out cannot reach other files.
A path no file system could hold (a segment over 255 bytes, over 4096 bytes in all, a NUL) is a
404 without asking the OS, and a lookup the OS refuses (symlink loop, name too long, permission)
is a 404 too: a path is client input, never a reason for a 500.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from twisted.logger import Logger
from twisted.web import static
from twisted.web.resource import Resource

from sfpltracker.web.common import error, request_info

log = Logger()

NAME_MAX = 255  # bytes in one path segment (Linux and the common file systems)
PATH_MAX = 4096  # bytes in a path the kernel accepts


def possible_path(relative: str) -> bool:
    """Could ``relative`` name a file at all? (no NUL, segments and total within the OS limits)"""
    raw = relative.encode("utf-8", "surrogateescape")
    if b"\x00" in raw or len(raw) > PATH_MAX:
        return False
    return all(len(segment) <= NAME_MAX for segment in raw.split(b"/"))


def resolve_inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` if it exists inside ``root`` after resolving symlinks, else None."""
    if not possible_path(relative):
        return None
    try:
        root = root.resolve()
        candidate = (root / relative.lstrip("/")).resolve()
        if candidate != root and root not in candidate.parents:
            return None
        if candidate.is_dir():
            candidate = candidate / "index.html"
            if not candidate.is_file():
                return None
        return candidate if candidate.is_file() else None
    except (OSError, RuntimeError, ValueError):
        # ELOOP / ENAMETOOLONG / EACCES / ENOTDIR from the OS; RuntimeError is Python's
        # "Symlink loop" (before 3.13); ValueError an unencodable name. None of them is a file.
        return None


class PubResource(Resource):
    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway
        self.root = gateway.cfg.path(gateway.cfg.StaticDirectory)

    def render_GET(self, request):
        rest = request.path.decode("latin-1").split("/", 4)
        relative = unquote(rest[4]) if len(rest) > 4 else ""
        target = resolve_inside(self.root, relative)
        if target is None:
            return error(request, 404, "no such file")
        self._track(request, relative)
        return static.File(str(target)).render_GET(request)

    def _track(self, request, relative: str) -> None:
        """Record the download as a server event; serving never waits for or fails on it."""
        gw = self.gateway
        req = request_info(request, gw)
        fields = {"ename": "pub", "etyp": "file", "url": req.uri}
        got = gw.events.records([fields], req, server=True)
        if not got.records:
            return
        d = gw.intake.accept(got.records)
        d.addCallback(lambda _: gw.count("events_accepted", got.accepted))
        d.addErrback(lambda f: log.info("download not tracked: {why}", why=f.getErrorMessage()))
