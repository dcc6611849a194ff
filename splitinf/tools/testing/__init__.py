"""Helpers for tests of splitinf and of code built on it: small ONNX models built in code."""
