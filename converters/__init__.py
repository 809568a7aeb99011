"""Converters from foreign SAE checkpoint formats to jsae `(SAEConfig, params)`.

Installed as `jsae.converters`. Each module handles one format; nothing outside this package
knows a foreign key name.
"""
