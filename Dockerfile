# sfpltracker on the embedded store: docker build -t sfpltracker . &&
#   docker run -p 8080:8080 -p 8880:8880 -v "$PWD/data:/app/data" sfpltracker
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sfpltracker ./sfpltracker
COPY twisted ./twisted
COPY static ./static
COPY config.json tracker.tac ./
# A regular (non-editable) install puts twisted/plugins/sfpltracker_plugin.py on sys.path.
# Every store's extra (pyproject's optional-dependencies but "test"): chDB is a dependency,
# DuckDB an extra (docs/duckdb.md); tests/test_setup.py checks the list.
RUN pip install --no-cache-dir ".[duckdb]" && twistd --help | grep -q sfpltracker \
    && python -c "import duckdb"
# The query listener must be reachable from the host when published; bind it inside the
# container on all interfaces and publish it only to localhost: -p 127.0.0.1:8123:8123
ENV SFPL_QueryPort=0.0.0.0:8123
EXPOSE 8080 8880 8443 8123
VOLUME ["/app/data"]
STOPSIGNAL SIGTERM
CMD ["twistd", "-n", "--pidfile=", "sfpltracker", "--config", "config.json"]
