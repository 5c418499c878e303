"""All terminal rendering (Rich) in one place: progress bars and spinners, the
summaries of every command.
"""
