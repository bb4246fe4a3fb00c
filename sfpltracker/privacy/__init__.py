"""Privacy rules applied before anything is stored or logged: IP policy, cookie policy."""


def build_enrichers(geoip=None) -> tuple:
    """The event enrichers of this package: GeoIP (when a database is open), user agent."""
    from sfpltracker.privacy.geoip import GeoEnricher
    from sfpltracker.privacy.useragent import UserAgentEnricher, warm_up

    warm_up()
    return ((GeoEnricher(geoip),) if geoip is not None else ()) + (UserAgentEnricher(),)
