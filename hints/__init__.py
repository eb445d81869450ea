"""Shipped hint files (``*.hints.json``) and board files (``boards/*.json``), installed as package data."""
