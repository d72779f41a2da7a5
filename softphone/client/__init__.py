"""The phone: the Python API (:class:`~softphone.client.phone.Phone`) and its
connection to a hub. Built on :mod:`softphone.core` and :mod:`softphone.media`.
"""
