"""User agents parsed server-side (``ua-parser``, the maintained uap-core rules) and bots flagged.

``browser``, ``os`` and ``device`` are filled only when the client did not send them, in the
browser client's own vocabulary (``device`` is Desktop / Mobile / Tablet, ``os`` macOS, iOS,
Windows, ...), so rows from the JavaScript client and from a pixel or a curl call group together.
``bot`` is 1 for the crawlers uap-core knows (its "Spider" device: Googlebot, bingbot, GPTBot,
facebookexternalhit, ...); with ``DropBots`` those events are not stored at all.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from sfpltracker.ingest.request import RequestInfo

_TABLET = re.compile(r"iPad|Tablet|PlayBook|Silk|Kindle", re.IGNORECASE)
_MOBILE = re.compile(r"Mobi|iPhone|iPod|Android|BlackBerry|IEMobile|Opera Mini", re.IGNORECASE)
_OS_NAMES = {"Mac OS X": "macOS", "Chrome OS": "ChromeOS", "Windows Phone": "Windows Phone"}


@dataclass(frozen=True)
class AgentInfo:
    browser: str
    os: str
    device: str
    bot: bool


@functools.lru_cache(maxsize=8192)
def parse_agent(user_agent: str) -> AgentInfo:
    """Browser family, OS family, device class and the bot flag of one User-Agent string."""
    from ua_parser import parse

    result = parse(user_agent)
    browser = result.user_agent.family if result.user_agent else ""
    os_family = result.os.family if result.os else ""
    device_family = result.device.family if result.device else ""
    bot = device_family == "Spider"
    if bot:
        device = "Bot"
    elif _TABLET.search(user_agent) or ("Android" in user_agent and "Mobile" not in user_agent):
        device = "Tablet"
    elif _MOBILE.search(user_agent):
        device = "Mobile"
    else:
        device = "Desktop"
    browser = "" if browser == "Other" else browser
    os_family = "" if os_family == "Other" else _OS_NAMES.get(os_family, os_family)
    return AgentInfo(browser=browser, os=os_family, device=device, bot=bot)


def warm_up() -> None:
    """Compile the parser's rules now (the first parse takes a noticeable fraction of a second)."""
    parse_agent("Mozilla/5.0 (X11; Linux x86_64) sfpltracker-warm-up")


class UserAgentEnricher:
    """Fills browser/os/device the client did not send and sets ``bot`` (client events only)."""

    def __call__(self, row: dict, req: RequestInfo) -> None:
        if row.get("server") or not req.user_agent.strip():
            return
        info = parse_agent(req.user_agent.strip())
        if info.bot:
            row["bot"] = 1
        for key in ("browser", "os", "device"):
            value = getattr(info, key)
            if value and not row.get(key):
                row[key] = value
