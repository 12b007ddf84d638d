"""What the web-call door and the worker must agree on: the signed dispatch grant, session types, token minting
and the settings both read. Both deployables import this package; it imports neither of them."""
