"""The hub (``softphone serve``): routes call messages by id over WebSocket,
hands out ICE servers, serves the browser phone, scales out on Redis.

Imports :mod:`softphone.core`, never the media stack (no aiortc, PyAV,
numpy or libopus in a hub process).
"""
