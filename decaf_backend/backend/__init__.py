"""Label Studio ML backend for DecAF: a small Flask app speaking Label Studio's ML backend protocol.

Modules: settings (env vars), schema (label config), context (clicks/boxes), results (LS JSON <-> masks),
media (downloads), session_cache/store (segmentations in memory / on disk), jobs (background predictions),
runtime (the per-process models and state), model (the LS-2.x-style model class), server (Flask routes),
metrics, importer and cli (`serve`, `import-videos`).
"""
