"""The web dashboard under ``/ui`` (docs/dashboard.md): sign-in (local admin or OIDC),
signed sessions with CSRF protection, pages over the store, and the read models in
:mod:`factorflow.web.ui.reads` that ``factorflow report`` shares."""
