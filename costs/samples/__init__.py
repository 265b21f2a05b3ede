"""Sample FOCUS exports of the three clouds (see generate.py) for the demo and the tests."""
