"""Static sites: a host's ``Root`` served with validators, ranges and pre-compressed files.

- ``ETag`` (mtime, size and encoding) and ``Last-Modified``; ``If-None-Match`` /
  ``If-Modified-Since`` answer 304 (``If-None-Match`` wins when both are sent).
- ``Range: bytes=a-b`` (one range; several ranges get the whole file, as RFC 9110 allows),
  ``If-Range``, 416 with ``Content-Range: bytes */size`` when unsatisfiable.
- ``file.br`` / ``file.gz`` next to ``file`` are sent instead when the client accepts that
  encoding (brotli preferred), with ``Content-Encoding`` and ``Vary: Accept-Encoding``.
- ``Cache-Control`` from the site entry; a directory serves its ``index.html`` (``/docs``
  redirects to ``/docs/`` so relative links work).
- Only regular files whose real path (symlinks resolved) is inside the root are served
  (``pub.resolve_inside``); ``..``, ``%2e%2e`` and symlinks out answer 404.
- With ``TrackPages``, each HTML page served (200 or 304 to a GET) is recorded as a server
  event ``page_view`` through the intake, as ``/tr/v1/pub/`` records downloads.
"""

from __future__ import annotations

import mimetypes
import os
import re
from pathlib import Path
from urllib.parse import unquote_to_bytes

from twisted.web import http, static

from .common import NOT_DONE_YET
from .pub import resolve_inside

SMALL_FILE = 256 * 1024  # read at once; larger files are streamed by a producer

ENCODINGS = ((b"br", ".br"), (b"gzip", ".gz"))
TEXT_TYPES = ("text/", "application/javascript", "application/json", "image/svg+xml")

_RANGE = re.compile(rb"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.I)


def content_type(name: str) -> bytes:
    ctype, _ = mimetypes.guess_type(name)
    ctype = ctype or "application/octet-stream"
    if ctype.startswith(TEXT_TYPES):
        ctype += "; charset=utf-8"
    return ctype.encode()


def accepted_encodings(header: bytes | None) -> set[bytes]:
    """Codings in ``Accept-Encoding`` with a q-value above 0 (``*`` is not expanded)."""
    out = set()
    for part in (header or b"").split(b","):
        name, _, params = part.strip().partition(b";")
        q = 1.0
        for param in params.split(b";"):
            key, _, value = param.strip().partition(b"=")
            if key.lower() == b"q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name and q > 0:
            out.add(name.strip().lower())
    return out


def parse_range(header: bytes, size: int) -> tuple[int, int] | None | bool:
    """(first, last) of a single ``bytes=`` range; None to ignore it; False if unsatisfiable."""
    if b"," in header:
        return None  # several ranges: serve the whole file
    m = _RANGE.match(header)
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            return False
        return (max(size - n, 0), size - 1) if size else False
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return False
    return start, min(end, size - 1)


def etag_matches(header: bytes, etag: bytes) -> bool:
    """Weak comparison (RFC 9110 13.1.2), as If-None-Match uses."""
    if header.strip() == b"*":
        return True
    bare = etag.removeprefix(b"W/")
    return any(t.strip().removeprefix(b"W/") == bare for t in header.split(b","))


class StaticFallback:
    """Serves the ``Root`` of the request's site; ``maybe_render`` returns None otherwise."""

    def __init__(self, router, track=None):
        self.router = router
        self.track = track

    def maybe_render(self, request):
        site = self.router.site_for(request.getHeader(b"host"))
        if site is None or site.root is None or request.method not in (b"GET", b"HEAD"):
            return None
        relative = unquote_to_bytes(request.path).decode("utf-8", "surrogateescape")
        target = resolve_inside(site.root, relative)
        if target is None:
            return None
        if (
            target.name == "index.html"
            and not relative.endswith(("/", "index.html"))
            and relative.strip("/")
        ):
            query = request.uri.partition(b"?")[2]
            request.setResponseCode(301)
            request.setHeader(b"location", request.path + b"/" + (b"?" + query if query else b""))
            return b""
        return self.serve(request, site, target)

    def serve(self, request, site, target: Path):
        root = site.root
        relative = str(target.relative_to(root))
        chosen, encoding, has_variants = target, None, False
        accepted = accepted_encodings(request.getHeader(b"accept-encoding"))
        for coding, suffix in ENCODINGS:
            sibling = resolve_inside(root, relative + suffix)
            if sibling is not None:
                has_variants = True
                if encoding is None and coding in accepted:
                    chosen, encoding = sibling, coding
        st = os.stat(chosen)
        size = st.st_size
        etag = b'"%x-%x%s"' % (st.st_mtime_ns, size, b"-" + encoding if encoding else b"")
        modified = int(st.st_mtime)
        ctype = content_type(target.name)

        request.setHeader(b"content-type", ctype)
        request.setHeader(b"etag", etag)
        request.setHeader(b"last-modified", http.datetimeToString(modified))
        request.setHeader(b"accept-ranges", b"bytes")
        if site.cache_control:
            request.setHeader(b"cache-control", site.cache_control)
        if has_variants:
            request.setHeader(b"vary", b"Accept-Encoding")
        if encoding:
            request.setHeader(b"content-encoding", encoding)

        is_page = ctype.startswith(b"text/html") and request.method == b"GET"
        if self._not_modified(request, etag, modified):
            if is_page and site.track_pages and self.track is not None:
                self._track(request)
            return _no_body(request, http.NOT_MODIFIED)

        span = None
        range_header = request.getHeader(b"range")
        if range_header and self._if_range_holds(request, etag, modified):
            span = parse_range(range_header, size)
            if span is False:
                request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
                request.setHeader(b"content-range", b"bytes */%d" % size)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b""
        if span is None and is_page and site.track_pages and self.track is not None:
            self._track(request)

        first, length = 0, size
        if span:
            first, last = span
            length = last - first + 1
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, last, size))
        request.setHeader(b"content-length", b"%d" % length)
        if request.method == b"HEAD":
            return b""
        if length <= SMALL_FILE:
            with open(chosen, "rb") as f:
                f.seek(first)
                body = f.read(length)
            request.write(body)
            request.finish()
            return NOT_DONE_YET
        fileobj = open(chosen, "rb")  # noqa: SIM115 - closed by the producer
        if span:
            producer = static.SingleRangeStaticProducer(request, fileobj, first, length)
        else:
            producer = static.NoRangeStaticProducer(request, fileobj)
        producer.start()
        return NOT_DONE_YET

    @staticmethod
    def _not_modified(request, etag: bytes, modified: int) -> bool:
        inm = request.getHeader(b"if-none-match")
        if inm is not None:
            return etag_matches(inm, etag)
        ims = request.getHeader(b"if-modified-since")
        if ims is not None:
            since = http.stringToDatetime(ims) if _valid_date(ims) else None
            return since is not None and modified <= since
        return False

    @staticmethod
    def _if_range_holds(request, etag: bytes, modified: int) -> bool:
        cond = request.getHeader(b"if-range")
        if cond is None:
            return True
        if cond.strip().startswith((b'"', b"W/")):
            return cond.strip() == etag  # strong comparison
        return _valid_date(cond) and http.stringToDatetime(cond) == modified

    def _track(self, request) -> None:
        self.track(request, {"ename": "page_view", "etyp": "view"})


def _valid_date(value: bytes) -> bool:
    try:
        http.stringToDatetime(value)
        return True
    except (ValueError, IndexError, KeyError):
        return False


def _no_body(request, code: int):
    """A bodiless answer (304) without a Content-Length claiming an empty representation."""
    request.setResponseCode(code)
    for name in (b"content-length", b"content-type", b"content-encoding"):
        request.responseHeaders.removeHeader(name)
    request.write(b"")
    request.finish()
    return NOT_DONE_YET
