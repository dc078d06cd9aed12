"""Pictures of the course: pure matplotlib drawings that return figures; they draw data, they run
nothing. One module per concept; :mod:`mnc_teach.viz.common` holds what they share.
"""
