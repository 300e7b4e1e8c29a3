"""ONNX Runtime on the CPU: session settings, sessions, runners for timing, runs that stop on a signal."""
