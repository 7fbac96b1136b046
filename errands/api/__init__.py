"""The thin HTTP shim: submission, inspection, health and metrics over the queue functions.

app.py is the application, server.py serves it with uvicorn, sockets.py binds its
socket; nothing is imported here, so that binding the socket loads no server.
"""
