"""The generations' API faces (issue 24): thin adapters over the use cases in `generations/`.

One package per face: `original/` (this cluster's own API), `v2/` (the AI Horde's),
`kobold/` (KoboldAI's), `openai/` (OpenAI's). The modules here at the top serve several
faces: `fields.py` (fields and parsers the faces share), `progress.py` and `ratings.py`
(one use case, a view per face), `sse.py` (server-sent events for the streaming faces).
The domain (`generations/*.py`) imports none of this; `koboldcluster/tests/test_faces.py`
fails if it does.
"""
