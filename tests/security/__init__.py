"""Security suite (issue 6): routes, roles, CSRF, XSS, injection, limits, login, secrets."""
