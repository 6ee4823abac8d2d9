"""The Tasks view: the recent-task store and the masking of what it serves."""
