"""Ray clusters: connecting to one, submitting jobs to it, and finding our own processes of a local one."""
