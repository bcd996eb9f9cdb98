"""Serving: the continuous-batching engine (:mod:`.engine`) and the OpenAI-compatible HTTP API (:mod:`.app`)."""
