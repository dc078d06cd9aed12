"""mnc_teach: Multi-task Network Cascades (Dai, He, Sun, CVPR 2016), built step by step for a
course.

The package is the single source of truth that the notebooks in ``notebooks/`` import.
See structures.py for the data contract and the shape legend used everywhere.
"""

__version__ = "0.1.0"
