"""The second server of two-server validated aggregation: it holds each client's share seed and answers the leader's
half of every check and of the sum (state.py: plain Python; service.py: its gRPC methods; __main__.py: the command)."""
