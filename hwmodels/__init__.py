"""Declarative hardware models: the built-in YAML files, their schema and loader."""
