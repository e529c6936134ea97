"""Torch-free runtime: sessions and providers, optimizer loop, image I/O, colour."""
