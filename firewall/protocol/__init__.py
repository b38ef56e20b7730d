"""Sans-IO protocol layer: bytes and messages only, no sockets, no trio."""
