"""Interactive explorers for the notebooks (ipywidgets around the drawings of :mod:`mnc_teach.viz`).
"""
