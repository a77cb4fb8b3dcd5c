"""Serving: a trained policy as an artifact (``artifact``), the request schema (``schema``), request -> ranking
(``ranker``), the HTTP service (``app``) and the shadow replay of a real log against it (``replay``)."""
