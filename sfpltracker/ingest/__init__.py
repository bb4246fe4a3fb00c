"""Turning what a client sent into rows: parsing every input form, typing fields, ids."""
