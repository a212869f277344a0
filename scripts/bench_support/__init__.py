"""Pieces of scripts/bench: data, servers, load (h2load), profiles."""
