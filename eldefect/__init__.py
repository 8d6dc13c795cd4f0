"""eldefect: defect classification for electroluminescence (EL) images of solar cells.

This package is the ML core. It must stay importable without torch for the light modules
(settings, labels, imaging statistics) so the gateway can use them.
"""

__version__ = "0.1.0"
