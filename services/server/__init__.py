"""`ank-server`: the server role of a node with Eclipse Ankaios's options."""
