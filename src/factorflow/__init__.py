"""factorflow: turns Okta MFA enrollment events into reliable downstream work."""

__version__ = "0.1.0"
