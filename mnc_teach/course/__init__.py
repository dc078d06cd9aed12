"""The course's own tools: exercise checks and the helpers notebooks use to show the package's code.
"""
