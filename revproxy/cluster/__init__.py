"""The fleet (#19): what several revproxy nodes share through Redis."""
