"""The code behind layers/build.py (the command line), one module per concern. Read build.py's docstring
first: it explains the layer's layout and lists these modules."""
