"""The HTTP API and the dashboard, on Starlette under uvicorn.

app.py builds the application, server.py serves it with uvicorn, sockets.py binds
its socket; nothing is imported here, so that binding the socket loads no server.
"""
