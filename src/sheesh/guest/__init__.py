"""Guest tier: the in-VM agent and its wire protocol (standard library only)."""
