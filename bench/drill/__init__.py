"""The chaos drill and the leak soak (`python -m bench.drill`, `make drill`): see bench/drill/drill.py."""
