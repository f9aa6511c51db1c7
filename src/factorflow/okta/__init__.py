"""The only code that knows Okta's JSON and API."""
