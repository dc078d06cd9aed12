"""Pictures of the course: pure matplotlib drawings that return figures; they draw data, they run nothing.
"""
