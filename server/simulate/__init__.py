"""The simulator moved above the server and the client (it runs both sides' code): `python -m simulation` or
`fedtl simulate`. This package only says so to whoever runs the old command."""
