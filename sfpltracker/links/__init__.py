"""Short links: accounts of the admin API, link validation, the link store and its cache.

HTTP lives in ``web/links.py`` (admin API and serving) and ``web/rdr.py`` (``/rdr/``,
``/xrdr/``); nothing here knows about Twisted requests.
"""
