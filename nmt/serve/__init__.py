"""`nmt serve`: a translation service with a web page, batching concurrent requests into one search.

    settings.py the options and their defaults (no torch, no FastAPI: `nmt --help` stays quick)
    batcher.py  one worker thread per model; requests with equal options share a search
    service.py  the models by name, settings, and one request's path from body to answer (no HTTP)
    schema.py   the request and answer models (pydantic): validation, errors and OpenAPI in one
    guards.py   the body limit (size, UTF-8), the API key, the JSON error shape
    metrics.py  Prometheus figures
    app.py      the FastAPI routes
    server.py   model loading, the socket, uvicorn and a clean stop on SIGTERM
    static/     the web page: plain HTML, CSS and JavaScript, no CDN
"""
