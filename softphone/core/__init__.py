"""The sans-I/O core: wire protocol, call state machine, one phone line.

Plain objects driven by events and time passed in. Nothing here imports
asyncio, aiohttp, aiortc or numpy (checked by ``tests/test_layers.py``).
"""
