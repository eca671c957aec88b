"""`ank`: the command-line client, with Eclipse Ankaios's verbs, over Zenoh."""
