"""How the host talks to a device: a small Transport protocol with local and SSH implementations."""
