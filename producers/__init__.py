"""Example services that write their business change and its event in one MongoDB transaction."""
