"""The built-in dashboard (``/dashboard/`` on the query listener): ``api`` (routes, the page's
files), ``auth`` (sign-in, sessions, CSRF), ``queries`` (the parameterised reads)."""
