"""The original tracker's URL normalisation of ``url`` and ``last`` (reference b.6), opt-in.

API.md keeps values as sent; a user switching from the original may want the rows the original
wrote (``NormalizeURLs``, switched on when the original's config file is loaded):

- no ``UrlFilter``: lower-cased; from the first ``https://`` (else ``http://``) on, the scheme
  is dropped but its ``//`` kept; everything from the first ``?`` dropped (a fragment before
  it stays): ``https://Ex.com/A?q=1`` -> ``//ex.com/a``, ``/slug?x=1`` -> ``/slug``;
- with ``UrlFilter``: the regex is searched in the value; when it matches and its group
  ``UrlFilterMatchGroup`` is not empty, that group is the value (the original's config takes
  the path of its own sites: ``https://tr.sfpl.io/A?x`` -> ``/a``), else the query is dropped;
  then the same lower-casing and scheme strip.
"""

from __future__ import annotations

import re


class UrlNormaliser:
    def __init__(self, url_filter: str = "", group: int = 0):
        self.pattern = re.compile(url_filter) if url_filter else None
        self.group = group

    def __call__(self, value: str) -> str:
        if self.pattern is not None:
            m = self.pattern.search(value)
            picked = m.group(self.group) if m and self.group <= self.pattern.groups else None
            value = picked if picked else value.split("?", 1)[0]
        value = value.lower()
        for scheme in ("https://", "http://"):
            at = value.find(scheme)
            if at >= 0:
                value = value[at + len(scheme) - 2 :]  # keep the "//"
                break
        return value.split("?", 1)[0]
