"""``/tr/v1/pub/...``: files from ``StaticDirectory``, each request tracked as a server event.

Only regular files whose real path (symlinks resolved) lies inside the directory are served;
anything else is a 404, so ``..``, encoded ``%2e%2e`` and symlinks out cannot reach other files.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from twisted.logger import Logger
from twisted.web import static
from twisted.web.resource import NoResource, Resource

from .common import request_info

log = Logger()


def resolve_inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` if it exists inside ``root`` after resolving symlinks, else None."""
    if "\x00" in relative:
        return None
    root = root.resolve()
    candidate = (root / relative.lstrip("/")).resolve()
    if candidate != root and root not in candidate.parents:
        return None
    if candidate.is_dir():
        candidate = candidate / "index.html"
        if not candidate.is_file():
            return None
    return candidate if candidate.is_file() else None


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
            return NoResource("No such file.").render(request)
        self._track(request, relative)
        return static.File(str(target)).render_GET(request)

    def _track(self, request, relative: str) -> None:
        """Record the download as a server event; serving never waits for or fails on it."""
        gw = self.gateway
        req = request_info(request, gw)
        visitor = gw.events.visitor(req)
        row = gw.events.event_row(
            {"ename": "pub", "etyp": "file", "url": req.uri}, req, visitor, server=True
        )
        if row is None:
            return
        d = gw.intake.accept([("events", row)])
        d.addCallback(lambda _: gw.count("events_accepted"))
        d.addErrback(lambda f: log.info("download not tracked: {why}", why=f.getErrorMessage()))
