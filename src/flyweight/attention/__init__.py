"""Approximate attention variants behind one interface."""
