"""Names the command line needs without importing the simulator itself."""

ALL_SCOPES = ("okta.users.read", "okta.groups.read", "okta.groups.manage", "okta.logs.read")

# What a hook for MFA enrollments would subscribe to (the hook-eligible user.mfa.factor.*).
DEFAULT_HOOK_EVENT_TYPES = (
    "user.mfa.factor.activate",
    "user.mfa.factor.deactivate",
    "user.mfa.factor.reset_all",
    "user.mfa.factor.suspend",
    "user.mfa.factor.unsuspend",
    "user.mfa.factor.update",
)
