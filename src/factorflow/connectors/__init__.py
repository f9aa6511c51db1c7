"""Connectors: action handlers for downstream systems (tickets, chat, paging, email, Okta)."""
