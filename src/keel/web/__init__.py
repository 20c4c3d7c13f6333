"""The console: server-rendered pages under /console."""
