"""Static sites: a host's ``Root`` served with validators, ranges and pre-compressed files.

- ``ETag`` (mtime, size and encoding) and ``Last-Modified``; ``If-None-Match`` /
  ``If-Modified-Since`` answer 304 (``If-None-Match`` wins when both are sent).
- ``Range: bytes=a-b`` (one range; several ranges get the whole file, as RFC 9110 allows),
  ``If-Range``, 416 with ``Content-Range: bytes */size`` when unsatisfiable.
- ``file.br`` / ``file.gz`` next to ``file`` are sent instead when the client accepts that
  encoding (brotli preferred), with ``Content-Encoding`` and ``Vary: Accept-Encoding``.
- ``Cache-Control`` from the site entry; a directory serves its ``index.html`` (``/docs``
  redirects to ``/docs/`` so relative links work).
- Resolved paths are kept a second (``FileCache``), so a changed file shows within a second.
- Only regular files whose real path (symlinks resolved) is inside the root are served
  (``pub.resolve_inside``); ``..``, ``%2e%2e``, symlinks out, and paths no file system could
  hold or the OS refuses to look up (a segment over 255 bytes, a symlink loop) answer 404.
- With ``TrackPages``, each HTML page served (200 or 304 to a GET) is recorded as a server
  event ``page_view`` through the intake, as ``/tr/v1/pub/`` records downloads.
"""

from __future__ import annotations

import mimetypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_to_bytes

from twisted.web import http, static

from sfpltracker.web.common import NOT_DONE_YET, error
from sfpltracker.web.pub import possible_path, resolve_inside

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


@dataclass
class Variant:
    """One file that can answer: the plain file or a pre-compressed sibling."""

    path: Path
    size: int
    etag: bytes
    modified: int  # seconds
    last_modified: bytes
    content: bytes | None = None  # small files, read once per cache period
    # The answer's headers that depend only on the file (and the site's Cache-Control, the
    # key): made on the first request of the cache period, not on every one.
    headers: dict[bytes | None, dict[bytes, bytes]] = field(default_factory=dict)

    @classmethod
    def of(cls, path: Path, coding: bytes) -> Variant:
        st = os.stat(path)
        suffix = b"-" + coding if coding else b""
        etag = b'"%x-%x%s"' % (st.st_mtime_ns, st.st_size, suffix)
        modified = int(st.st_mtime)
        return cls(path, st.st_size, etag, modified, http.datetimeToString(modified))


@dataclass
class Found:
    """What a path of a site resolves to; kept a second by ``FileCache``."""

    target: Path | None  # the real file, or None: nothing to serve
    directory_redirect: bool = False  # a directory named without its trailing slash
    ctype: bytes = b""
    variants: dict[bytes, Variant] = field(default_factory=dict)  # coding (b"": none)


class FileCache:
    """Resolved paths, their stat results and small files' bytes, for ``seconds``.

    Resolving a path safely (every component's symlinks, ``resolve_inside``) and finding its
    pre-compressed siblings costs a dozen system calls; a site serves the same few paths over
    and over, so the answer is kept briefly, as nginx's ``open_file_cache`` does. A changed
    file is seen within ``seconds``. At most ``size`` paths and ``content_budget`` bytes.
    """

    def __init__(self, clock, seconds: float = 1.0, size: int = 4096, content_budget=32 << 20):
        self.clock = clock
        self.seconds = seconds
        self.size = size
        self.content_budget = content_budget
        self.content_bytes = 0
        self._entries: dict[tuple[Path, str], tuple[float, Found]] = {}

    def find(self, root: Path, relative: str) -> Found:
        key = (root, relative)
        now = self.clock.seconds()
        hit = self._entries.get(key)
        if hit is not None:
            if hit[0] > now:
                return hit[1]
            self._forget(key)
        elif not possible_path(relative):  # not kept: a flood of 16 KB paths would fill it
            return Found(None)
        found = _resolve(root, relative)
        if len(self._entries) >= self.size:
            self._forget(next(iter(self._entries)))
        self._entries[key] = (now + self.seconds, found)
        return found

    def content(self, variant: Variant) -> bytes | None:
        """The bytes of a small file (read now, or kept from earlier); None when too big."""
        if variant.content is None and variant.size <= SMALL_FILE:
            with open(variant.path, "rb") as f:
                data = f.read(variant.size + 1)
            if len(data) != variant.size:  # changed under us: do not keep it
                return data
            if self.content_bytes + variant.size <= self.content_budget:
                variant.content = data
                self.content_bytes += variant.size
            return data
        return variant.content

    def _forget(self, key) -> None:
        _, found = self._entries.pop(key)
        for variant in found.variants.values():
            if variant.content is not None:
                self.content_bytes -= variant.size
                variant.content = None


def _resolve(root: Path, relative: str) -> Found:
    try:
        return _resolve_variants(root, relative)
    except OSError:  # removed or changed between resolving and stat(): nothing to serve
        return Found(None)


def _resolve_variants(root: Path, relative: str) -> Found:
    target = resolve_inside(root, relative)
    if target is None:
        return Found(None)
    if target.name == "index.html" and not relative.endswith(("/", "index.html")):
        if relative.strip("/"):
            return Found(target, directory_redirect=True)
    variants = {b"": Variant.of(target, b"")}
    inside = str(target.relative_to(root))
    for coding, suffix in ENCODINGS:
        sibling = resolve_inside(root, inside + suffix)
        if sibling is not None:
            variants[coding] = Variant.of(sibling, coding)
    return Found(target, ctype=content_type(target.name), variants=variants)


class StaticFallback:
    """Serves the ``Root`` of the request's site; ``maybe_render`` returns None otherwise."""

    def __init__(self, router, clock, track=None):
        self.router = router
        self.track = track
        self.files = FileCache(clock)

    def maybe_render(self, request):
        site = self.router.site_for(request.getHeader(b"host"))
        if site is None or site.root is None or request.method not in (b"GET", b"HEAD"):
            return None
        path = request.path
        relative = (unquote_to_bytes(path) if b"%" in path else path).decode(
            "utf-8", "surrogateescape"
        )
        found = self.files.find(site.root, relative)
        if found.target is None:
            return None
        if found.directory_redirect:
            query = request.uri.partition(b"?")[2]
            request.setResponseCode(301)
            request.setHeader(b"location", request.path + b"/" + (b"?" + query if query else b""))
            return b""
        return self.serve(request, site, found)

    def serve(self, request, site, found: Found):
        encoding = b""
        if len(found.variants) > 1:
            accepted = accepted_encodings(request.getHeader(b"accept-encoding"))
            encoding = next((c for c, _ in ENCODINGS if c in found.variants and c in accepted), b"")
        variant = found.variants[encoding]
        etag, modified, size = variant.etag, variant.modified, variant.size
        ctype = found.ctype

        headers = variant.headers.get(site.cache_control)
        if headers is None:
            headers = {b"content-type": ctype, b"etag": etag}
            headers[b"last-modified"] = variant.last_modified
            headers[b"accept-ranges"] = b"bytes"
            if site.cache_control:
                headers[b"cache-control"] = site.cache_control
            if len(found.variants) > 1:
                headers[b"vary"] = b"Accept-Encoding"
            if encoding:
                headers[b"content-encoding"] = encoding
            if len(variant.headers) < 8:
                variant.headers[site.cache_control] = headers
        set_headers = getattr(request, "set_headers", None)  # the fast layer's: one update
        if set_headers is not None:
            set_headers(headers)
        else:
            for name, value in headers.items():
                request.setHeader(name, value)

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
        if isinstance(span, tuple):
            first, last = span
            length = last - first + 1
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, last, size))
        request.setHeader(b"content-length", b"%d" % length)
        if request.method == b"HEAD":
            return b""
        try:
            if length <= SMALL_FILE:
                body = self.files.content(variant)
                if body is not None:
                    request.write(body[first : first + length] if span else body)
                    request.finish()
                    return NOT_DONE_YET
            fileobj = open(variant.path, "rb")  # noqa: SIM115 - closed by the producer
        except OSError:  # removed within the cache's second
            request.responseHeaders.removeHeader(b"content-length")
            return error(request, 404, "not found")
        producer: static.StaticProducer
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
